"""The callback base class and the list that dispatches events to callbacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
from torch import nn

from ..util import did_you_mean

if TYPE_CHECKING:
    from ..trainer import Trainer

HOOKS = ("on_fit_start", "on_epoch_start", "on_train_batch_end", "on_optimizer_step", "on_validation_end", "on_epoch_end", "on_fit_end")
# Not events but questions the trainer asks; at most one callback of a run may answer each.
SUPPLIES = ("evaluation_model", "final_weights")


class Callback:
    """Base class for callbacks. Override only the hooks you need.

    ===================  ==========================================  ===============================
    hook                 when                                         arguments
    ===================  ==========================================  ===============================
    on_fit_start         once, after checks, before the first epoch   trainer
    on_epoch_start       before each training epoch                   trainer
    on_train_batch_end   after every batch (also inside gradient      trainer, loss (detached tensor;
                         accumulation); skipped when no callback       reading it is your own sync)
                         listens
    on_optimizer_step    after every optimizer step (under gradient      trainer (`trainer.state` counts
                         accumulation: after the group's last batch,    the step already)
                         before its on_train_batch_end); skipped when
                         no callback listens
    on_validation_end    after validation, when val data is given     trainer, logs (val_* floats)
                         (each epoch's end; with val_every_n_steps
                         also inside the epoch: then
                         trainer.validating_at_step is the step)
    on_epoch_end         after training and validation of an epoch    trainer, logs (floats)
    on_fit_end           once, when training ends for any reason       trainer
                         except an exception or a signal
    ===================  ==========================================  ===============================

    A callback may read `trainer.model`, `trainer.optimizer`, `trainer.state` (epoch, global_step,
    step_in_epoch), `trainer.history`, `trainer.log_names` and `trainer.batches_per_epoch`, add
    keys to `logs` in `on_epoch_end` (with `priority` < 10, so loggers see them), and write
    `trainer.should_stop = True` (with `trainer.stop_reason`) to stop after the current step. Its
    `state_dict()` is saved in checkpoints and handed back through `load_state_dict()` on resume.
    Hooks with other `on_*` names are an error. A callback listens to the hooks its class overrides;
    `listens` may say "not in this run" for some of them, and the loop then skips the call.

    Two questions, not events, let a callback supply weights (EMA, SWA, EarlyStopping's
    restore_best_weights): `evaluation_model(trainer)`, the module that fit's validations run
    instead of `trainer.model`, and `final_weights(trainer)`, a state dict the model is given when
    fit ends (after every `on_fit_end`, so checkpoints keep the training state; before
    `model.safetensors` is written). None means "the model's own". At most one callback of a run
    may answer each (two are a ValueError when the Trainer is built).

    Under torchrun every rank runs every callback, on identical (all-reduced) logs, unless the class
    sets `rank_zero_only = True` (loggers, progress, plots, checkpoints): those run on rank 0 alone.
    A callback on every rank must decide the same way on every rank (e.g. `should_stop`).
    """

    priority = 0  # callbacks run by increasing priority, then in the order given: loggers 10, checkpoints 20
    rank_zero_only = False  # True: under torchrun only rank 0 runs this callback's hooks
    saves_checkpoints = False  # True: under strategy="fsdp" it runs on every rank (each writes its shards)

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_epoch_start(self, trainer: "Trainer") -> None: ...

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None: ...

    def on_optimizer_step(self, trainer: "Trainer") -> None: ...

    def on_validation_end(self, trainer: "Trainer", logs: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def evaluation_model(self, trainer: "Trainer") -> nn.Module | None:
        """The module fit's validations run instead of `trainer.model` (not `validate`, `test`, `predict`)."""
        return None

    def final_weights(self, trainer: "Trainer") -> dict[str, torch.Tensor] | None:
        """The state dict `trainer.model` is given when fit ends (not on a signal or an exception)."""
        return None

    def listens(self, hook: str) -> bool:
        """Whether `hook` is called on this callback in this run: by default, whether the class overrides it.

        Asked once per hook, when the trainer is built. Override it to say "not in this run" for a
        hook the class has (ModelCheckpoint without `every_n_steps`): when nobody listens, the loop
        skips the call per batch or per step, and the host syncs that come with it.
        """
        return getattr(type(self), hook) is not getattr(Callback, hook)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class CallbackList:
    """Calls each hook on every callback that listens to it, by priority.

    Under torchrun, callbacks with `rank_zero_only` are skipped on every rank but rank 0.
    """

    def __init__(self, callbacks: Iterable[Callback], rank_zero: bool = True, sharded: bool = False) -> None:
        callbacks = list(callbacks)
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be gl.Callback instances; received {callback!r}")
            for name in dir(type(callback)):
                if name.startswith("on_") and name not in HOOKS:
                    raise TypeError(
                        f"{type(callback).__name__}.{name} is not a gradloop hook{did_you_mean(name, HOOKS)}; hooks are: {', '.join(HOOKS)}"
                    )
        self.callbacks = sorted(callbacks, key=lambda c: c.priority)
        self.rank_zero = rank_zero
        # sharded (FSDP): a checkpoint is written by every rank, so callbacks that save run on every rank
        every_rank = [c for c in self.callbacks if not c.rank_zero_only or (sharded and c.saves_checkpoints)]
        runs_here = [c for c in self.callbacks if rank_zero or c in every_rank]
        self._listeners = {name: [c for c in runs_here if c.listens(name)] for name in HOOKS + SUPPLIES}
        # the same on every rank: what decides whether a per-batch collective happens
        self._all_rank_listeners = {hook: [c for c in every_rank if c.listens(hook)] for hook in HOOKS}
        for question in SUPPLIES:
            answering = [type(c).__name__ for c in self.callbacks if c.listens(question)]
            if len(answering) > 1:
                raise ValueError(f"{' and '.join(answering)} would both supply the {question.replace('_', ' ')}: keep one of them")

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def listens(self, hook: str) -> bool:
        return bool(self._listeners[hook])

    def listens_on_every_rank(self, hook: str) -> bool:
        """Some callback that runs on every rank listens to `hook` (the same answer on all ranks)."""
        return bool(self._all_rank_listeners[hook])

    def call(self, hook: str, *args: Any) -> None:
        for callback in self._listeners[hook]:
            getattr(callback, hook)(*args)

    def evaluation_model(self, trainer: "Trainer") -> nn.Module | None:
        return next((c.evaluation_model(trainer) for c in self._listeners["evaluation_model"]), None)

    def final_weights(self, trainer: "Trainer") -> dict[str, torch.Tensor] | None:
        return next((c.final_weights(trainer) for c in self._listeners["final_weights"]), None)

    def keys(self) -> list[str]:
        """Stable names for checkpoint state: class name, with #N for repeats."""
        seen: dict[str, int] = {}
        keys = []
        for callback in self.callbacks:
            name = type(callback).__name__
            keys.append(name if name not in seen else f"{name}#{seen[name]}")
            seen[name] = seen.get(name, 0) + 1
        return keys

    def state_dict(self) -> dict[str, Any]:
        return {key: callback.state_dict() for key, callback in zip(self.keys(), self.callbacks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, callback in zip(self.keys(), self.callbacks):
            if key in state:
                callback.load_state_dict(state[key])
