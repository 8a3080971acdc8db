"""Verifying saved files without training: is this checkpoint (or weights file) usable, and what is in it?

`verify_checkpoint` is what `gradloop verify` runs on every file: the checksum and safe load of
checkpoint.py, then the layout's parts (layout.py) and the counters read back the way a resume
reads them (TrainState, History). It reads the whole file once, as a resume does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..history import History
from ..state import TrainState
from ..util import first_line
from . import sharded
from .checkpoint import SUFFIX, CheckpointError, load
from .finding import candidates
from .layout import check_parts
from .weights import read_weights

WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint that verifies holds.

    `epoch` is the epoch a resume starts in (counted from 0, so between epochs it is the number of
    epochs done); `step` the optimizer steps taken; `mid_epoch` whether it was written inside an
    epoch (`batch_in_epoch` batches into it); `size` the file's size in bytes; `settings` what the
    run checks on resume (batch size, data size, optimizer, loss, seed, ...) and `hyperparameters`
    the optimizer's first parameter group (lr, betas, weight_decay, ...).
    """

    path: Path
    size: int
    epoch: int
    step: int
    mid_epoch: bool = False
    batch_in_epoch: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        done = f"{self.epoch} epoch{'s' if self.epoch != 1 else ''} done"
        where = f"mid-epoch: {done} + {self.batch_in_epoch} batches" if self.mid_epoch else done
        return f"{where}, step {self.step}, {size_text(self.size)}"


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights file (`model.safetensors`) that loads holds."""

    path: Path
    size: int
    tensors: int
    parameters: int  # elements over all tensors

    def describe(self) -> str:
        return f"{self.tensors} tensors, {self.parameters:,} values, {size_text(self.size)}"


def verify_checkpoint(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Checks that `path` is a complete, uncorrupted gradloop checkpoint a resume can use.

    Verifies the checksum of every byte, loads it without unpickling code and checks its parts
    (model weights, optimizer, counters, history, ...). Returns a `CheckpointInfo`; raises
    `CheckpointError` with one line naming the file and what is wrong (missing, truncated,
    corrupt, a plain torch.save file, not a training state).
    """
    path = Path(path)
    if path.is_dir():  # strategy="fsdp"'s directory of DCP shards: its manifest, then its training state
        sharded.verify(path)
        saved = {**sharded.read_extra(path), "model": {}, "optimizer": {}}
        saved["optimizer"]["param_groups"] = saved.pop("param_groups", [])
        size = sum(p.stat().st_size for p in path.iterdir())
    else:
        saved, size = load(path), path.stat().st_size
        _check_model(saved["model"], path)
    check_parts(saved, path)
    progress = TrainState()
    try:
        progress.load_state_dict(saved["progress"])
        History().load_state_dict(saved["history"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has damaged training counters or history: {first_line(err)}") from None
    resume_point = saved["resume_point"]
    mid_epoch = isinstance(resume_point, Mapping) and resume_point.get("order") is not None
    versions = saved.get("versions")
    return CheckpointInfo(
        path=path,
        size=size,
        epoch=progress.epoch,
        step=progress.global_step,
        mid_epoch=mid_epoch,
        batch_in_epoch=progress.batch_in_epoch if mid_epoch else 0,
        versions={str(k): str(v) for k, v in versions.items()} if isinstance(versions, Mapping) else {},
        settings=_plain(saved["settings"]),
        hyperparameters=_first_group(saved["optimizer"]),
    )


def verify_weights(path: str | os.PathLike[str]) -> WeightsInfo:
    """Checks that a safetensors weights file loads; raises CheckpointError naming it when it does not."""
    path = Path(path)
    tensors = read_weights(path)
    return WeightsInfo(path, path.stat().st_size, len(tensors), sum(t.numel() for t in tensors.values()))


def verify_file(path: str | os.PathLike[str]) -> CheckpointInfo | WeightsInfo:
    """`verify_weights` for a `.safetensors` file, `verify_checkpoint` for anything else."""
    path = Path(path)
    if path.is_dir() and path.suffix != SUFFIX:
        raise CheckpointError(f"{str(path)!r} is a directory, not a checkpoint file")
    return verify_weights(path) if path.suffix == WEIGHTS_SUFFIX else verify_checkpoint(path)


def run_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """What `gradloop verify RUN_DIR` checks: `checkpoint_files(RUN_DIR/checkpoints)`, then
    RUN_DIR/model.safetensors if present."""
    run_dir = Path(run_dir)
    weights = run_dir / ("model" + WEIGHTS_SUFFIX)
    return checkpoint_files(run_dir / "checkpoints") + ([weights] if weights.exists() else [])


def checkpoint_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Every file in `directory`: checkpoints newest first (the order a resume tries them), then
    any other file. Hidden files (the temporary files of an unfinished write) are left out: they
    are never taken for a checkpoint."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    # hidden names: temporary files of a write (gradloop never hides a checkpoint)
    others = (p for p in directory.iterdir() if not p.name.startswith(".") and not p.is_dir() and p.suffix != SUFFIX)
    return candidates(directory) + sorted(others)


def _check_model(model: Any, path: Path) -> None:
    if not isinstance(model, Mapping) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold model weights (its 'model' part is not a state dict of tensors)")


def _first_group(optimizer: Any) -> dict[str, Any]:
    groups = optimizer.get("param_groups") if isinstance(optimizer, Mapping) else None
    if not groups or not isinstance(groups[0], Mapping):
        return {}
    return _plain({k: v for k, v in groups[0].items() if k != "params"})


def _plain(values: Any) -> dict[str, Any]:
    """A dict of plain Python values: 0-d tensors (a tensor lr) as numbers, other tensors described."""
    if not isinstance(values, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else f"tensor of shape {tuple(value.shape)}"
        out[str(key)] = value
    return out


def size_text(size: int) -> str:
    """Bytes for people: `812 B`, `21.6 kB`, `1.3 GB` (powers of 1000, as `ls -h --si`)."""
    if size < 1000:
        return f"{size} B"
    value, units = size / 1000, ["kB", "MB", "GB", "TB"]
    while value >= 1000 and len(units) > 1:
        value, units = value / 1000, units[1:]
    return f"{value:.1f} {units[0]}"
