"""Progress display: one line per epoch (the rich live bar comes with the callbacks work)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer


def format_logs(logs: dict[str, float]) -> str:
    parts = []
    for name, value in logs.items():
        if name == "time":
            parts.append(f"{value:.1f}s")
        elif name == "lr":
            parts.append(f"lr {value:.3g}")
        else:
            parts.append(f"{name} {value:.4f}")
    return "  ".join(parts)


class ProgressBar(Callback):
    """Prints `epoch E/N  loss ...  val_loss ...` at the end of every epoch."""

    order = 10

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        stream = self.stream or sys.stdout
        width = len(str(trainer.max_epochs))
        print(f"epoch {trainer.state.epoch + 1:>{width}}/{trainer.max_epochs}  {format_logs(logs)}", file=stream, flush=True)
