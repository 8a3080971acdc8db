"""Checkpoint files: atomic write, checksum, safe load; safetensors export of weights."""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "gradloop-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, corrupt, foreign or incompatible."""


def save(state: dict[str, Any], path: Path) -> Path:
    """Writes `state` to `path` atomically: temp file in the same directory, fsync, rename."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    envelope = {"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, envelope)
    return path


def _atomic_write(path: Path, envelope: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(envelope, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Loads and verifies a checkpoint without unpickling code; raises CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable (truncated, corrupt or not a gradloop checkpoint): {type(err).__name__}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a gradloop checkpoint")
    if envelope.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {envelope.get('version')}; this gradloop reads version {VERSION}")
    payload = envelope["payload"]
    if hashlib.sha256(payload).hexdigest() != envelope.get("sha256"):
        raise CheckpointError(f"checkpoint {str(path)!r} fails its checksum: the file is corrupt")
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {str(path)!r} holds data that cannot be loaded safely: {type(err).__name__}") from None


def latest(directory: Path) -> Path | None:
    """`last.ckpt` if present, else the newest `*.ckpt` in `directory`, else None."""
    last = directory / "last.ckpt"
    if last.is_file():
        return last
    candidates = sorted(directory.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if directory.is_dir() else []
    return candidates[0] if candidates else None


def export_weights(model: nn.Module, path: Path) -> Path:
    """Writes the model's weights as safetensors (atomically)."""
    from safetensors.torch import save

    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    data = save(_unshare(tensors))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Loads weights written by `export_weights` (or any safetensors file) into `model`."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"weights file {str(path)!r} cannot be read: {err}") from None
    model.load_state_dict(tensors, strict=strict)
    return model


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        out[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    return out
