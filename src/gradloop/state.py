"""Training progress: where the loop is."""
from __future__ import annotations

from dataclasses import asdict, dataclass



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
