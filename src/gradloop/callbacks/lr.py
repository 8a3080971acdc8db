"""Learning-rate schedules: any torch scheduler, per epoch or per optimizer step, and ReduceLROnPlateau."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, TypeGuard, Union

import torch
from torch.optim.lr_scheduler import LRScheduler as TorchLRScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau as TorchReduceLROnPlateau

from ..util import check_count, is_number
from .base import Callback
from .monitor import VAL_LOSS, check_monitor, infer_mode, monitored_value, resolve_monitor

if TYPE_CHECKING:
    from ..trainer import Trainer

Scheduler = Union[TorchLRScheduler, TorchReduceLROnPlateau]
SchedulerFactory = Callable[[torch.optim.Optimizer], Scheduler]


class LRScheduler(Callback):
    """Drives a torch LR scheduler: `interval="epoch"` steps it after each epoch, `"step"` after each
    optimizer step (not each batch: with gradient accumulation there are fewer steps than batches),
    in `on_optimizer_step`: an `on_train_batch_end` then sees the LR of the next step.

    `scheduler_or_factory` is a scheduler built on the trainer's optimizer, or a callable that
    builds one from the optimizer (called in `on_fit_start`), e.g. warm-up then cosine decay::

        LRScheduler(lambda opt: SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=100),
                                                   CosineAnnealingLR(opt, T_max=900)], milestones=[100]),
                    interval="step")

    Per epoch, the logged `lr` is the LR the epoch trained with:

    >>> import torch
    >>> import gradloop as gl
    >>> halve = gl.LRScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    >>> trainer = gl.Trainer(torch.nn.Linear(3, 2), lr=0.1, max_epochs=3, callbacks=[halve], default_callbacks=False)
    >>> trainer.fit((torch.randn(16, 3), torch.randint(0, 2, (16,))))["lr"]
    [0.1, 0.05, 0.025]

    With `monitor`, the scheduler is stepped with that logged value (`interval="epoch"` only), as
    torch's ReduceLROnPlateau needs. With more than one param group, the LR of group i >= 1 at the
    epoch's last optimizer step is logged as `lr_group<i>` (group 0 is the trainer's `lr`).
    The scheduler's state is saved in checkpoints.
    """

    def __init__(self, scheduler_or_factory: Scheduler | SchedulerFactory, interval: str = "epoch", monitor: str | None = None) -> None:
        if not (_is_scheduler(scheduler_or_factory) or callable(scheduler_or_factory)):
            raise TypeError(
                f"LRScheduler needs a torch LR scheduler or a callable optimizer -> scheduler; received: {scheduler_or_factory!r}"
            )
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step'; received: interval={interval!r}")
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"monitor must be the name of a logged value or None; received: monitor={monitor!r}")
        if monitor is not None and interval == "step":
            raise ValueError(f"monitor={monitor!r} is logged once per epoch: use interval='epoch' with a monitor")
        self._given = scheduler_or_factory
        self.interval = interval
        self.monitor = self._requested_monitor = monitor  # resolved in on_fit_start (the default may fall back to "loss")
        self.scheduler: Scheduler | None = scheduler_or_factory if _is_scheduler(scheduler_or_factory) else None
        self._step_lrs: list[float] | None = None  # with several param groups: the LRs of the epoch's last step

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self._requested_monitor is not None:
            self.monitor = resolve_monitor(trainer.log_names, self._requested_monitor, type(self).__name__)
        scheduler = self._given if _is_scheduler(self._given) else self._given(trainer.optimizer)  # type: ignore[operator]
        if not _is_scheduler(scheduler):
            raise TypeError(f"the LRScheduler factory must return a torch LR scheduler; it returned {type(scheduler).__name__}")
        if scheduler.optimizer is not trainer.optimizer:
            raise ValueError(
                "the LR scheduler drives another optimizer than the trainer's: pass a factory, "
                "e.g. LRScheduler(lambda opt: StepLR(opt, step_size=10))"
            )
        if isinstance(scheduler, TorchReduceLROnPlateau) and self.monitor is None:
            raise ValueError("torch's ReduceLROnPlateau steps with a metric: pass LRScheduler(..., monitor='val_loss')")
        self.scheduler = scheduler
        self._step_lrs = None

    def listens(self, hook: str) -> bool:
        return self.interval == "step" if hook == "on_optimizer_step" else super().listens(hook)

    def on_optimizer_step(self, trainer: "Trainer") -> None:
        if len(trainer.optimizer.param_groups) > 1:
            self._step_lrs = group_lrs(trainer.optimizer)  # the LRs this optimizer step used
        assert self.scheduler is not None
        self.scheduler.step()

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        lrs = self._step_lrs or group_lrs(trainer.optimizer)  # per step: those the epoch's last step used
        for i, lr in enumerate(lrs[1:], start=1):
            logs.setdefault(f"lr_group{i}", lr)  # the first LR callback to log an epoch, before any steps
        self._step_lrs = None
        assert self.scheduler is not None
        if self.interval == "step":
            return
        if self.monitor is None:
            self.scheduler.step()
        else:
            self.scheduler.step(monitored_value(logs, self.monitor, type(self).__name__))  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # On resume the trainer calls this after on_fit_start has built the scheduler (and then puts the optimizer's
        # saved LRs back); a state loaded before the factory has run is dropped, as the next fit starts over.
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


class ReduceLROnPlateau(LRScheduler):
    """Multiplies the LR by `factor` when `monitor` stops improving: an `LRScheduler` that drives torch's ReduceLROnPlateau.

    The scheduler is torch's, with torch's semantics: the LR drops after more than `patience`
    epochs without improvement, then `cooldown` epochs pass before counting again, never below
    `min_lr`. As in Keras, `min_delta` is an absolute threshold (torch's `threshold_mode="abs"`):
    an epoch improves when it beats the best by more than `min_delta`. `mode="auto"` infers min or
    max from the monitor's name. The LR of each param group beyond the first is logged as
    `lr_group<i>`; the scheduler's state is saved in checkpoints.

    >>> import torch
    >>> import gradloop as gl
    >>> plateau = gl.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)  # nothing improves by 10
    >>> trainer = gl.Trainer(torch.nn.Linear(3, 2), lr=0.1, max_epochs=4, callbacks=[plateau], default_callbacks=False)
    >>> trainer.fit((torch.randn(16, 3), torch.randint(0, 2, (16,))))["lr"]
    [0.1, 0.1, 0.05, 0.025]
    """

    def __init__(
        self,
        monitor: str = VAL_LOSS,
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float | list[float] | tuple[float, ...] = 0.0,
    ) -> None:
        check_monitor(monitor, mode)
        if not is_number(factor) or not 0 < factor < 1:
            raise ValueError(f"factor must be a number in (0, 1), the LR is multiplied by it; received: factor={factor!r}")
        if not is_number(min_delta) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a number >= 0; received: min_delta={min_delta!r}")
        check_count("patience", patience, minimum=0)
        check_count("cooldown", cooldown, minimum=0)
        lows = list(min_lr) if isinstance(min_lr, (list, tuple)) else [min_lr]
        if any(not is_number(v) or not v >= 0 for v in lows):
            raise ValueError(f"min_lr must be a number >= 0 (or one per param group); received: min_lr={min_lr!r}")
        super().__init__(self._plateau, monitor=monitor)
        self.mode = self._requested_mode = mode  # resolved in on_fit_start
        self.factor, self.patience, self.min_delta = float(factor), patience, float(min_delta)
        self.cooldown, self.min_lr = cooldown, min_lr

    def _plateau(self, optimizer: torch.optim.Optimizer) -> TorchReduceLROnPlateau:
        """The factory: `on_fit_start` calls it once `monitor` is resolved."""
        assert self.monitor is not None
        self.mode = infer_mode(self.monitor, self._requested_mode)
        return TorchReduceLROnPlateau(
            optimizer,
            mode=self.mode,  # type: ignore[arg-type]  # "min" or "max": infer_mode returns nothing else
            factor=self.factor,
            patience=self.patience,
            threshold=self.min_delta,
            threshold_mode="abs",
            cooldown=self.cooldown,
            min_lr=list(self.min_lr) if isinstance(self.min_lr, (list, tuple)) else self.min_lr,
        )


def group_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    """The current LR of every param group, as floats."""
    return [float(group["lr"]) for group in optimizer.param_groups]


def _is_scheduler(obj: Any) -> TypeGuard[Scheduler]:
    return isinstance(obj, (TorchLRScheduler, TorchReduceLROnPlateau))
