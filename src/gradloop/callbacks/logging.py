"""Run records: metrics.csv (one row per epoch), metrics.jsonl (plus step rows), TensorBoard.

Every file is rebuilt from what the resumed run knows (`trainer.history`, `trainer.state`) when a
fit starts, so a resumed run never has duplicated or stale rows. Whole-file rewrites go through
a temporary file and `os.replace`: a crash leaves the old file or the new one, never half of one.
They are not fsynced: the checkpoint is the durable record, and these files are rebuilt from it.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, TextIO

import torch

from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer

PathLike = str | os.PathLike[str]


def atomic_write(path: Path, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

    order = 10
    rank_zero_only = True  # under torchrun: rank 0 alone writes and prints

    def __init__(self, path: PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._file: Path | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._file = run_file(trainer, self.path, "metrics.csv", "CSVLogger")
        self._write(trainer)

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        self._write(trainer)

    def _write(self, trainer: "Trainer") -> None:
        if self._file is None:
            raise ValueError("CSVLogger.on_fit_start was not called: add the logger to Trainer(callbacks=[...])")
        epochs = trainer.history.epochs
        columns: dict[str, None] = {"epoch": None}
        for row in epochs or [dict.fromkeys(trainer.log_names)]:
            columns.update(dict.fromkeys(row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows({"epoch": e, **values} for e, values in enumerate(epochs))
        atomic_write(self._file, text.getvalue().encode())


def _json_value(value: Any) -> Any:
    """Non-finite floats become null: NaN and Infinity are not JSON, and strict readers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps({k: _json_value(v) for k, v in row.items()}, allow_nan=False) + "\n"


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
    - `{"type": "step", "epoch": E, "global_step": S, "loss": ...}` every `log_every_n_steps`
      optimizer steps (`None` for none); `loss` is the loss of the batch that completed step S.
      Each step row reads that loss from the device: one host sync per `log_every_n_steps` steps.

    Non-finite values are written as `null`. On resume, the file is rewritten at the start of the
    fit: the step rows it already holds up to the resumed `global_step`, and one epoch row per
    epoch of `trainer.history`; rows beyond the resume point (written after that checkpoint) go.
    A fit that does not resume starts the file afresh. Rows are appended line by line afterwards.
    """

    order = 10
    rank_zero_only = True  # under torchrun: rank 0 alone writes and prints

    def __init__(self, path: PathLike | None = None, log_every_n_steps: int | None = 50) -> None:
        if log_every_n_steps is not None and (isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int)
                                              or log_every_n_steps < 1):
            raise ValueError(f"log_every_n_steps must be a positive integer or None; received: log_every_n_steps={log_every_n_steps!r}")
        self.path = Path(path) if path is not None else None
        self.log_every_n_steps = log_every_n_steps
        self._handle: TextIO | None = None
        self._last_step = 0
        if log_every_n_steps is not None:
            # An instance attribute, not a class method: without step rows the logger has no
            # per-batch hook at all, and the loop skips per-batch dispatch when nobody listens.
            self.on_train_batch_end = self._log_step  # type: ignore[method-assign]

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._close()
        file = run_file(trainer, self.path, "metrics.jsonl", "JSONLLogger")
        step = trainer.state.global_step
        kept = read_jsonl(file) if step > 0 and file.is_file() else []
        rows = [r for r in kept if r.get("type") == "step" and isinstance(r.get("global_step"), int) and r["global_step"] <= step]
        rows += [{"type": "epoch", "epoch": e, **logs} for e, logs in enumerate(trainer.history.epochs)]
        rows.sort(key=_row_position)
        atomic_write(file, "".join(_dumps(r) for r in rows).encode())
        self._handle = open(file, "a", encoding="utf-8", buffering=1)  # line-buffered: each row reaches the OS
        self._last_step = step

    def _log_step(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        step = trainer.state.global_step
        if step == self._last_step or step % self.log_every_n_steps:  # type: ignore[operator]
            return  # under gradient accumulation several batches share one step
        self._last_step = step
        self._write({"type": "step", "epoch": trainer.state.epoch, "global_step": step, "loss": float(loss)})

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        self._write({"type": "epoch", "epoch": trainer.state.epoch, **logs})

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


def _row_position(row: dict[str, Any]) -> tuple[int, int, int]:
    """Step rows of an epoch, in step order, then that epoch's row."""
    epoch = row.get("epoch") if isinstance(row.get("epoch"), int) else 0
    if row.get("type") == "step":
        return (epoch, 0, row["global_step"])
    return (epoch, 1, 0)


class TensorBoardLogger(Callback):
    """Writes every epoch's logs as TensorBoard scalars (tag = log name, step = epoch).

    Needs the `tensorboard` package (`pip install tensorboard`); without it construction fails
    with an ImportError that says so. Events go to `log_dir`, by default `run_dir/tensorboard`.
    A resumed run discards events from the resumed epoch on (`purge_step`), so curves do not fold.
    """

    order = 10
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
        for name, value in _scalars(logs):
            self._writer.add_scalar(name, value, global_step=trainer.state.epoch)
        self._writer.flush()

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _scalars(logs: dict[str, Any]) -> Iterable[tuple[str, float]]:
    return ((name, float(value)) for name, value in logs.items() if isinstance(value, (int, float)))
