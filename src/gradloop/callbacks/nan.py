"""TerminateOnNaN: stop at the first batch whose loss is NaN or infinite."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer


class TerminateOnNaN(Callback):
    """Stops training after the first batch with a non-finite loss (Keras's TerminateOnNaN).

    It reads every batch's loss, which costs one host-device sync per batch: that is the price of
    stopping within one step. The epoch still ends (validation, logs, `on_epoch_end`) and
    `on_fit_end` runs; `trainer.stop_reason` is "non-finite loss"; stderr and the
    attributes `stopped_epoch`, `stopped_batch`, `stopped_step` say where.
    After the stop, `stopped_epoch`, `stopped_batch` (batch index inside that epoch, from 0) and
    `stopped_step` (`trainer.state.global_step` then: the optimizer steps taken, including the one
    this batch completed, if any) say where it happened; they are None until then.
    """

    priority = -10  # before loggers and checkpoints, so that they already see the stop in the same batch

    def __init__(self) -> None:
        self.stopped_epoch: int | None = None
        self.stopped_batch: int | None = None
        self.stopped_step: int | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.stopped_epoch = self.stopped_batch = self.stopped_step = None

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        if self.stopped_step is not None or bool(torch.isfinite(loss).all()):  # the sync
            return
        state = trainer.state
        self.stopped_epoch, self.stopped_batch, self.stopped_step = state.epoch, state.batch_in_epoch - 1, state.global_step
        value = float(loss) if loss.numel() == 1 else "non-finite"
        trainer.should_stop = True
        trainer.stop_reason = trainer.stop_reason or "non-finite loss"
        print(
            f"gradloop: non-finite loss ({value}) at epoch {self.stopped_epoch}, batch {self.stopped_batch} "
            f"(global step {self.stopped_step}): training stops",
            file=sys.stderr,
        )
