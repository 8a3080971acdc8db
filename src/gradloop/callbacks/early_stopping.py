"""EarlyStopping: stop when the monitored value stops improving (Keras 3 semantics, exactly)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..util import check_count, is_number
from .base import Callback
from .monitor import VAL_LOSS, check_monitor, infer_mode, is_improvement, monitored_value, resolve_monitor, worst

if TYPE_CHECKING:
    from ..trainer import Trainer


class EarlyStopping(Callback):
    """Stops training when `monitor` has not improved for `patience` epochs.

    Keras 3's rules: an epoch improves when its value beats the best so far by more than
    `min_delta`; every monitored epoch adds one to `wait`, an improvement resets it to 0 only if the
    value also beats `baseline` (when given), and training stops at the end of a non-improving epoch
    with `wait >= patience` (never at epoch 0). Epochs before `start_from_epoch` are ignored.
    `mode="auto"` infers the direction from the name (min for losses and errors, max for accuracy-like
    metrics) and raises ValueError when it cannot.

    With `restore_best_weights=True` the model gets the weights of the best epoch back at the end
    of training (after every `on_fit_end`, so `last.ckpt` keeps the state to resume from),
    whatever ended it (this stop, another callback's, max_epochs); when no epoch
    improved at all (say every value was NaN), those of the first monitored epoch. The best
    weights are kept on the model's device and copied in place only on improving epochs.

    After training, `stopped_epoch` is the epoch at which this callback stopped (0 if it did
    not), `best` and `best_epoch` the best value and its epoch, `wait` the epochs since then.

    A loss that never improves by more than `min_delta` stops at epoch `patience`:

    >>> import torch
    >>> import gradloop as gl
    >>> stop = gl.EarlyStopping(monitor="loss", min_delta=10.0, patience=2)
    >>> trainer = gl.Trainer(torch.nn.Linear(3, 2), max_epochs=10, callbacks=[stop], default_callbacks=False)
    >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    >>> len(trainer.fit((X, y)).epochs), stop.stopped_epoch, stop.best_epoch, trainer.stop_reason
    (3, 2, 0, 'early stopping at epoch 2')
    """

    def __init__(
        self,
        monitor: str = VAL_LOSS,
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        check_monitor(monitor, mode)
        _check_number("min_delta", min_delta)
        check_count("patience", patience, minimum=0)
        check_count("start_from_epoch", start_from_epoch, minimum=0)
        if baseline is not None:
            _check_number("baseline", baseline)
        self.monitor, self.mode = monitor, mode  # resolved in on_fit_start (the default may fall back to "loss")
        self._requested = (monitor, mode)
        self.min_delta = abs(float(min_delta))
        self.patience = patience
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = start_from_epoch
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.best = worst(self.mode)
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        monitor, mode = self._requested
        self.monitor = resolve_monitor(trainer.log_names, monitor, "EarlyStopping")
        self.mode = infer_mode(self.monitor, mode)
        self._reset()  # a fresh fit starts over; a resumed one gets its state back through load_state_dict

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        epoch = trainer.state.epoch
        if epoch < self.start_from_epoch:
            return
        current = monitored_value(logs, self.monitor, "EarlyStopping")
        if self.restore_best_weights and self.best_weights is None:
            self._keep_weights(trainer)  # Keras: until something improves, the first monitored epoch is the best
            self.best_epoch = epoch
        self.wait += 1
        if is_improvement(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self._keep_weights(trainer)
            if self.baseline is None or is_improvement(current, self.baseline, self.mode, self.min_delta):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            trainer.should_stop = True
            trainer.stop_reason = trainer.stop_reason or f"early stopping at epoch {epoch}"

    def listens(self, hook: str) -> bool:
        return self.restore_best_weights if hook == "final_weights" else super().listens(hook)

    def final_weights(self, trainer: "Trainer") -> dict[str, torch.Tensor] | None:
        return self.best_weights if self.restore_best_weights else None

    def _keep_weights(self, trainer: "Trainer") -> None:
        current = trainer.model.state_dict()
        if self.best_weights is None or self.best_weights.keys() != current.keys():
            self.best_weights = {name: t.detach().clone() for name, t in current.items()}
            return
        for name, tensor in current.items():  # state_dict() tensors are detached: no autograd here
            self.best_weights[name].copy_(tensor)

    def state_dict(self) -> dict[str, Any]:
        """Counters, best value and epoch, and the best weights (the live tensors: save them at once)."""
        return {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait = int(state["wait"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        weights = state.get("best_weights")
        self.best_weights = None if weights is None else {k: t.detach().clone() for k, t in weights.items()}


def _check_number(name: str, value: Any) -> None:
    if not is_number(value):
        raise TypeError(f"{name} must be a number; received: {name}={value!r}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number, not NaN; received: {name}={value!r}")
