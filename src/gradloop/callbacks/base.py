"""The callback base class and the list that dispatches events to callbacks."""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

import torch

if TYPE_CHECKING:
    from ..trainer import Trainer

F = TypeVar("F", bound=Callable[..., Any])
HOOKS = ("on_fit_start", "on_epoch_start", "on_train_batch_end", "on_optimizer_step", "on_validation_end",
         "on_epoch_end", "on_fit_end")


def _default(hook: F) -> F:
    hook._gradloop_default = True  # type: ignore[attr-defined]
    return hook


class Callback:
    """Base class for callbacks. Override only the hooks you need.

    ===================  ==========================================  ===============================
    hook                 when                                         arguments
    ===================  ==========================================  ===============================
    on_fit_start         once, after checks, before the first epoch   trainer
    on_epoch_start       before each training epoch                   trainer
    on_train_batch_end   after every batch (also inside gradient      trainer, loss (detached tensor;
                         accumulation); skipped when no callback       reading it is your own sync)
                         overrides it
    on_optimizer_step    after every optimizer step (under gradient      trainer (`trainer.state` counts
                         accumulation: after the group's last batch,    the step already)
                         before its on_train_batch_end); skipped when
                         no callback overrides it
    on_validation_end    after validation, when val data is given     trainer, logs (val_* floats)
    on_epoch_end         after training and validation of an epoch    trainer, logs (floats)
    on_fit_end           once, when training ends for any reason       trainer
                         except an exception or a signal
    ===================  ==========================================  ===============================

    A callback may read `trainer.model`, `trainer.optimizer`, `trainer.state` (epoch, global_step,
    step_in_epoch), `trainer.history`, `trainer.log_names` and `trainer.batches_per_epoch`, add
    keys to `logs` in `on_epoch_end` (with `order` < 10, so loggers see them), and write `trainer.should_stop = True` (with `trainer.stop_reason`) to stop
    after the current step. Its `state_dict()` is saved in checkpoints and handed back through
    `load_state_dict()` on resume. Hooks with other `on_*` names are an error.

    Under torchrun every rank runs every callback, on identical (all-reduced) logs, unless the class
    sets `rank_zero_only = True` (loggers, progress, plots, checkpoints): those run on rank 0 alone.
    A callback on every rank must decide the same way on every rank (e.g. `should_stop`).
    """

    order = 0  # callbacks run in increasing order, then in the order given: loggers 10, checkpoints 20
    rank_zero_only = False  # True: under torchrun only rank 0 runs this callback's hooks

    @_default
    def on_fit_start(self, trainer: "Trainer") -> None: ...

    @_default
    def on_epoch_start(self, trainer: "Trainer") -> None: ...

    @_default
    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None: ...

    @_default
    def on_optimizer_step(self, trainer: "Trainer") -> None: ...

    @_default
    def on_validation_end(self, trainer: "Trainer", logs: dict[str, float]) -> None: ...

    @_default
    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None: ...

    @_default
    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def overrides(callback: Callback, hook: str) -> bool:
    return not getattr(getattr(callback, hook), "_gradloop_default", False)


def _check_hook_names(callback: Callback) -> None:
    for name in dir(type(callback)):
        if name.startswith("on_") and name not in HOOKS:
            close = difflib.get_close_matches(name, HOOKS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{type(callback).__name__}.{name} is not a gradloop hook{hint}; hooks are: {', '.join(HOOKS)}")


class CallbackList:
    """Calls each hook on every callback that overrides it, in order.

    Under torchrun, callbacks with `rank_zero_only` are skipped on every rank but rank 0.
    """

    def __init__(self, callbacks: Iterable[Callback], rank_zero: bool = True) -> None:
        callbacks = list(callbacks)
        for callback in callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be gl.Callback instances; received {callback!r}")
            _check_hook_names(callback)
        self.callbacks = sorted(callbacks, key=lambda c: c.order)
        self.rank_zero = rank_zero
        runs_here = [c for c in self.callbacks if rank_zero or not c.rank_zero_only]
        self._listeners = {hook: [c for c in runs_here if overrides(c, hook)] for hook in HOOKS}
        # the same on every rank: what decides whether a per-batch collective happens
        self._all_rank_listeners = {hook: [c for c in self.callbacks if overrides(c, hook) and not c.rank_zero_only]
                                    for hook in HOOKS}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.callbacks)

    def listens(self, hook: str) -> bool:
        return bool(self._listeners[hook])

    def listens_on_every_rank(self, hook: str) -> bool:
        """Some callback that runs on every rank overrides `hook` (the same answer on all ranks)."""
        return bool(self._all_rank_listeners[hook])

    def call(self, hook: str, *args: Any) -> None:
        for callback in self._listeners[hook]:
            getattr(callback, hook)(*args)

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
