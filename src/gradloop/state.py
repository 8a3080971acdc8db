"""Where the loop is: the progress counters and the point inside an epoch a resumed run picks up."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .names.metrics import MetricSet


@dataclass
class TrainState:
    """Where training is. Epochs count from 0; `global_step` counts optimizer steps.

    `step_in_epoch` is the number of optimizer steps taken in the current epoch and
    `batch_in_epoch` the number of batches consumed (they differ under gradient accumulation).
    """

    epoch: int = 0
    global_step: int = 0
    step_in_epoch: int = 0
    batch_in_epoch: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("epoch", "global_step", "step_in_epoch", "batch_in_epoch"):
            setattr(self, key, int(state[key]))


class DataState(Protocol):
    """The training data's own state (a stateful loader's position, a user generator's state), or None."""

    def state_dict(self) -> dict[str, Any] | None: ...

    def load_state_dict(self, state: dict[str, Any] | None) -> None: ...


@dataclass
class ResumePoint:
    """What an epoch interrupted mid-way needs besides the counters: its data order (None between
    epochs), whether it is done (saved from `on_epoch_end`), its running metric sums and its LR
    (the first param group's LR at its last optimizer step so far). `data`: the training batches,
    whose own state is saved with it, between epochs too."""

    metrics: MetricSet
    order: dict[str, Any] | None = None
    epoch_done: bool = False
    epoch_lr: float = 0.0
    data: DataState | None = None

    def start_epoch(self, order: dict[str, Any], lr: float) -> None:
        self.order, self.epoch_done, self.epoch_lr = order, False, float(lr)
        self.metrics.reset()

    def end_epoch(self) -> None:
        self.order, self.epoch_done = None, False

    @property
    def mid_epoch(self) -> bool:
        return self.order is not None and not self.epoch_done

    def state_dict(self) -> dict[str, Any]:
        """Between epochs (or once the epoch is done) only the LR: the next epoch starts afresh."""
        mid = self.mid_epoch
        return {
            "order": self.order if mid else None,
            "metrics": self.metrics.state_dict() if mid else None,
            "epoch_lr": self.epoch_lr,
            "data": self.data.state_dict() if self.data is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.epoch_done, self.epoch_lr = state["order"], False, float(state["epoch_lr"])
        if self.data is not None:
            self.data.load_state_dict(state.get("data"))  # checkpoints before it was saved have none
        if state["metrics"] is not None:
            self.metrics.load_state_dict(state["metrics"])
        else:
            self.metrics.reset()
