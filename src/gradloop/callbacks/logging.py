"""Run records: metrics.csv (one row per epoch), metrics.jsonl (plus step rows), TensorBoard.

Every file is rebuilt from what the resumed run knows (`trainer.history`, `trainer.state`) when a
fit starts, so a resumed run never has duplicated or stale rows. Whole-file rewrites are atomic
(`util.atomic_write`): a crash leaves the old file or the new one, never half of one. They are not
fsynced (`durable=False`): the checkpoint is the durable record, and these files are rebuilt from it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch

from ..data.devices import host_sync_allowed
from ..util import atomic_write, check_count, is_number
from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer

PathLike = str | os.PathLike[str]


def run_file(trainer: "Trainer", path: Path | None, name: str, owner: str) -> Path:
    """`path` if given, else `run_dir/name`; a ValueError when there is neither."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    if trainer.run_dir is None:
        raise ValueError(f"{owner} needs a path or a Trainer run_dir: pass {owner}(path=...) or Trainer(run_dir=...)")
    return trainer.run_dir / name


class CSVLogger(Callback):
    """Writes `metrics.csv` in the run directory (or `path`): one row per epoch.

    Columns: `epoch` (from 0), then the logged values in the order they first appear (`loss`,
    metrics, `val_loss`, `val_<metric>`, `lr`, `time`, ...); a value an epoch lacks is left empty.
    The file is rewritten whole from `trainer.history` at the start of a fit and after every
    epoch (it is small), so a resumed run has exactly one row per epoch and late columns are fine.
    """

    priority = 10
    rank_zero_only = True  # under torchrun: rank 0 alone writes and prints

    def __init__(self, path: PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._write(trainer)

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        self._write(trainer)

    def _write(self, trainer: "Trainer") -> None:
        epochs = trainer.history.epochs
        names = [name for row in epochs for name in row] if epochs else trainer.log_names
        columns = dict.fromkeys(["epoch", *names])  # in the order they first appear
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows({"epoch": e, **values} for e, values in enumerate(epochs))
        atomic_write(run_file(trainer, self.path, "metrics.csv", "CSVLogger"), text.getvalue(), durable=False)


def _dumps(row: dict[str, Any]) -> str:
    """One JSON line. Non-finite floats become null: NaN and Infinity are not JSON, and strict readers reject them."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
    return json.dumps(finite, allow_nan=False) + "\n"


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


class JSONLLogger(Callback):
    """Writes `metrics.jsonl` in the run directory (or `path`), one JSON object per line.

    - `{"type": "epoch", "epoch": E, "loss": ..., "val_loss": ..., "lr": ..., "time": ...}` per epoch;
    - `{"type": "validation", "epoch": E, "global_step": S, "val_loss": ...}` for each validation
      inside an epoch (`Trainer(val_every_n_steps=...)`);
    - `{"type": "step", "epoch": E, "global_step": S, "loss": ...}` every `log_every_n_steps`
      optimizer steps (`None` for none); `loss` is the loss of the batch that completed step S.
      Each step row reads that loss from the device: one host sync per `log_every_n_steps` steps.

    Non-finite values are written as `null`. On resume, the file is rewritten at the start of the
    fit: the step rows it already holds up to the resumed `global_step`, and one epoch row per
    epoch of `trainer.history`; rows beyond the resume point (written after that checkpoint) go.
    A fit that does not resume starts the file afresh. Rows are appended line by line afterwards.
    """

    priority = 10
    rank_zero_only = True  # under torchrun: rank 0 alone writes and prints

    def __init__(self, path: PathLike | None = None, log_every_n_steps: int | None = 50) -> None:
        check_count("log_every_n_steps", log_every_n_steps, optional=True)
        self.path = Path(path) if path is not None else None
        self.log_every_n_steps = log_every_n_steps
        self._handle: TextIO | None = None
        self._step_due = False  # the step just taken gets a row, with the loss of the batch that completed it
        self._loss = torch.tensor(math.nan)  # the last batch's loss (a reference: read only for a row)

    def listens(self, hook: str) -> bool:
        if hook in ("on_optimizer_step", "on_train_batch_end"):  # without step rows: nothing per batch or step
            return self.log_every_n_steps is not None
        return super().listens(hook)

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._close()
        file = run_file(trainer, self.path, "metrics.jsonl", "JSONLLogger")
        step = trainer.state.global_step
        kept = read_jsonl(file) if step > 0 and file.is_file() else []
        rows = [r for r in kept if _is_step_row_until(r, step)]
        rows += [{"type": "epoch", "epoch": e, **logs} for e, logs in enumerate(trainer.history.epochs)]
        rows.sort(key=_row_position)
        atomic_write(file, "".join(_dumps(r) for r in rows), durable=False)
        self._handle = open(file, "a", encoding="utf-8", buffering=1)  # line-buffered: each row reaches the OS
        self._step_due = False

    def on_optimizer_step(self, trainer: "Trainer") -> None:
        assert self.log_every_n_steps is not None  # listens() says so
        self._step_due = trainer.state.global_step % self.log_every_n_steps == 0

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        self._loss = loss
        if self._step_due:
            self._write_step(trainer)

    def on_validation_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if trainer.validating_at_step is not None:  # the epoch's own validation is part of its epoch row
            self._write({"type": "validation", "epoch": trainer.state.epoch, "global_step": trainer.validating_at_step, **logs})

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if self._step_due:  # a step after the epoch's last batch (an unsized loader that ended mid-group)
            self._write_step(trainer)
        self._write({"type": "epoch", "epoch": trainer.state.epoch, **logs})

    def _write_step(self, trainer: "Trainer") -> None:
        self._step_due = False
        state = trainer.state
        with host_sync_allowed():  # one read every log_every_n_steps steps
            loss = float(self._loss)
        self._write({"type": "step", "epoch": state.epoch, "global_step": state.global_step, "loss": loss})

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._close()

    def _write(self, row: dict[str, Any]) -> None:
        if self._handle is None:
            raise ValueError("JSONLLogger.on_fit_start was not called: add the logger to Trainer(callbacks=[...])")
        self._handle.write(_dumps(row))

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _is_step_row_until(row: dict[str, Any], step: int) -> bool:
    """A step or validation row written at `step` or before: part of the run being resumed."""
    return row.get("type") in ("step", "validation") and isinstance(row.get("global_step"), int) and row["global_step"] <= step


def _row_position(row: dict[str, Any]) -> tuple[int, bool, int]:
    """Step and validation rows of an epoch, in step order, then that epoch's row."""
    epoch = row["epoch"] if isinstance(row.get("epoch"), int) else 0
    return (epoch, row["type"] == "epoch", row.get("global_step", 0))


class TensorBoardLogger(Callback):
    """Writes every epoch's logs as TensorBoard scalars (tag = log name, step = epoch).

    Needs the `tensorboard` package (`pip install tensorboard`); without it construction fails
    with an ImportError that says so. Events go to `log_dir`, by default `run_dir/tensorboard`.
    A resumed run discards events from the resumed epoch on (`purge_step`), so curves do not fold.
    """

    priority = 10
    rank_zero_only = True  # under torchrun: rank 0 alone writes and prints

    def __init__(self, log_dir: PathLike | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("TensorBoardLogger needs tensorboard: pip install tensorboard") from err
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer: Any = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._close()
        log_dir = run_file(trainer, self.log_dir, "tensorboard", "TensorBoardLogger")
        purge = len(trainer.history.epochs) if trainer.state.global_step > 0 else None
        self._writer = self._writer_class(log_dir=str(log_dir), purge_step=purge)

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        for name, value in logs.items():
            if is_number(value):
                self._writer.add_scalar(name, float(value), global_step=trainer.state.epoch)
        self._writer.flush()

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
