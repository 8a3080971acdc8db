"""Run records: metrics.csv, one row per epoch."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer


class CSVLogger(Callback):
    """Writes `metrics.csv` in the run directory (or `path`): epoch, then every logged value.

    The file is rewritten whole from the history each epoch (it is small), so a resumed run never
    has duplicated or missing rows, and a new column appearing later is handled.
    """

    order = 10

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.path is None:
            if trainer.run_dir is None:
                raise ValueError("CSVLogger needs a path or a Trainer run_dir")
            self.path = trainer.run_dir / "metrics.csv"

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        rows = [{"epoch": e, **values} for e, values in enumerate(trainer.history.epochs)]
        columns: dict[str, Any] = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
