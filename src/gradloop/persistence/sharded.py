"""Sharded checkpoints (strategy="fsdp"): a directory of `torch.distributed.checkpoint` files.

`last.ckpt/` holds DCP's files (every rank writes its shards of the weights and the optimizer
state, restorable on another world size), one `extra.rank<R>` entry per rank (the rest of
`layout.trainer_state`: progress, resume point, history, callbacks, settings, that rank's RNG
states, as torch.save bytes) and `manifest.json` (each file's size and sha256). It is written
into a hidden sibling directory and renamed into place once every rank has finished, so it is
complete or absent; loading verifies the manifest first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..data import distributed
from ..util import first_line
from . import checkpoint
from .checkpoint import CheckpointError

if TYPE_CHECKING:
    from ..trainer import Trainer

MANIFEST = "manifest.json"
_TENSOR_PARTS = ("model", "optimizer")


def save(trainer: "Trainer", path: Path) -> Path:
    """Writes `trainer`'s full state to the directory `path` (a collective: call it on every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .layout import trainer_state

    checkpoint.path_in(path.parent, path.name)
    rank = distributed.world()[0]
    staging = path.parent / f".{path.name}.partial"
    if distributed.is_rank_zero():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    distributed.barrier()
    rest = {key: value for key, value in trainer_state(trainer).items() if key not in _TENSOR_PARTS}
    rest["param_groups"] = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.state_dict()["param_groups"]]
    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer)
    state = {"model": model_state, "optimizer": optimizer_state, f"extra.rank{rank}": _to_bytes(rest)}
    try:
        with _one_process_quiet():
            dcp.save(state, checkpoint_id=str(staging))
    except OSError as err:
        raise checkpoint.CheckpointWriteError(f"could not write the checkpoint {str(path)!r}: {err.strerror}") from err
    distributed.barrier()
    if distributed.is_rank_zero():
        _write_manifest(staging)
        _commit(staging, path)
    distributed.barrier()  # every rank returns once the checkpoint is in place
    return path


def verify(path: str | os.PathLike[str]) -> None:
    """Every file of the manifest is there with its size and sha256; a CheckpointError naming the first that is not."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"sharded checkpoint {str(path)!r} has no readable {MANIFEST}: it is incomplete") from None
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"sharded checkpoint {str(path)!r} lacks its file {name!r}")
        if (size := file.stat().st_size) != entry["size"]:
            raise CheckpointError(f"sharded checkpoint {str(path)!r}: {name!r} has {size} bytes, not {entry['size']} (truncated)")
        if _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"sharded checkpoint {str(path)!r}: {name!r} does not match its sha256 (corrupted)")


def load(trainer: "Trainer", path: Path) -> dict[str, Any]:
    """The verified state at `path`, laid out like `layout.trainer_state` (model and optimizer as DCP
    state dicts of this trainer's, sharded or not, restored by `restore_tensors`); on any world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    verify(path)
    try:
        entries = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        own = f"extra.rank{distributed.world()[0]}"
        key = own if own in entries else "extra.rank0"  # a rank the writing run did not have takes rank 0's
        model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer)
        blob = torch.empty(entries[key].size, dtype=torch.uint8)  # type: ignore[union-attr]
        with _one_process_quiet():
            dcp.load({"model": model_state, "optimizer": optimizer_state, key: blob}, checkpoint_id=str(path))
        rest = torch.load(io.BytesIO(blob.numpy().tobytes()), map_location=trainer.device, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"sharded checkpoint {str(path)!r} does not fit this model and optimizer: {first_line(err)}") from None
    for group, saved_group in zip(optimizer_state["param_groups"], rest.pop("param_groups")):
        group.update(saved_group)  # type: ignore[attr-defined]
    return {**rest, "model": model_state, "optimizer": optimizer_state, "sharded": True}


def read_extra(path: Path, rank: int = 0) -> dict[str, Any]:
    """The non-tensor part of a verified checkpoint, as rank `rank` wrote it (no model needed)."""
    import torch.distributed.checkpoint as dcp

    key = f"extra.rank{rank}"
    try:
        blob = torch.empty(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata[key].size, dtype=torch.uint8)  # type: ignore[union-attr]
        with _one_process_quiet():
            dcp.load({key: blob}, checkpoint_id=str(path), no_dist=True)
        return torch.load(io.BytesIO(blob.numpy().tobytes()), weights_only=True)
    except Exception as err:
        raise CheckpointError(f"sharded checkpoint {str(path)!r} has no readable training state: {first_line(err)}") from None


def restore_tensors(trainer: "Trainer", saved: dict[str, Any]) -> None:
    """Puts the weights and optimizer state of `load` into the trainer's (sharded) model and optimizer."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=saved["model"], optim_state_dict=saved["optimizer"])


def link(source: Path, target: Path) -> Path:
    """A second name for the committed checkpoint directory `source`: its files hard-linked (or copied)."""
    checkpoint.path_in(target.parent, target.name)
    staging = target.parent / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging, copy_function=_link_or_copy)
        _commit(staging, target)
    except OSError as err:
        raise checkpoint.CheckpointWriteError(f"could not write the checkpoint {str(target)!r}: {err.strerror}") from err
    return target


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _write_manifest(directory: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(directory.iterdir()) if p.is_file()}
    (directory / MANIFEST).write_text(json.dumps({"format": "gradloop-dcp", "version": 1, "files": files}, indent=1))


def _commit(staging: Path, path: Path) -> None:
    """`staging` becomes `path`; an older `path` goes only once the new one is in place."""
    old = path.parent / f".{path.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if path.is_dir():
        path.rename(old)
    elif path.exists():
        path.unlink()
    staging.rename(path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _one_process_quiet() -> Iterator[None]:
    """Without a process group DCP reads and writes as one process (what is meant) and warns that it does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _to_bytes(value: Any) -> torch.Tensor:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
