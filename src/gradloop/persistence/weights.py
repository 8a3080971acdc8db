"""The final weights as safetensors: `model.safetensors` in the run directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..compilation import plain_module, without_prefix
from ..util import first_line
from .checkpoint import CheckpointError, write
from .restore import load_model_state


def export_weights(model: nn.Module, path: str | os.PathLike[str], sharded: bool = False) -> Path:
    """Writes the model's weights as safetensors (atomically); a compiled model's under the plain module's names.

    `sharded` (FSDP): the full weights are gathered on every rank (call it on all), rank 0 writes."""
    from safetensors.torch import save as to_bytes

    from ..data import distributed, fsdp

    path = Path(path)
    state = fsdp.full_state_dict(plain_module(model)) if sharded else plain_module(model).state_dict()
    if not distributed.is_rank_zero():
        return path
    tensors = {name: t.detach().contiguous().cpu() for name, t in state.items()}
    return write(path, to_bytes(_unshare(tensors), metadata={"format": "pt"}))


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (on the CPU); a missing or unreadable file is a CheckpointError naming it."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(
            f"weights file {str(path)!r} is not a readable safetensors file: {type(err).__name__}: {first_line(err)}"
        ) from None


def load_weights(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> nn.Module:
    """Loads weights written by `export_weights` (or any safetensors file) into `model`; returns it.

    `strict=False` skips missing and unexpected keys (shapes must still match). A missing or
    unreadable file, or weights of another architecture, is a `CheckpointError` naming the file.

    >>> import torch
    >>> from torch import nn
    >>> trained = nn.Linear(3, 2)
    >>> path = export_weights(trained, "model.safetensors")
    >>> model = load_weights(nn.Linear(3, 2), path)
    >>> torch.equal(model.weight, trained.weight)
    True
    >>> load_weights(nn.Linear(5, 2), path)
    Traceback (most recent call last):
    ...
    gradloop.persistence.checkpoint.CheckpointError: ...model.safetensors...
    """
    tensors = read_weights(path)
    if strict:
        load_model_state(model, tensors, path)
        return model
    try:
        plain = plain_module(model)
        plain.load_state_dict(without_prefix(tensors, plain), strict=False)
    except RuntimeError as err:  # strict=False still refuses a shape mismatch
        raise CheckpointError(f"{str(path)!r} cannot be loaded into this model: {type(err).__name__}: {first_line(err)}") from None
    return model


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied weights): give each its own copy.
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        out[name] = tensor.clone() if key in seen else tensor
        seen.add(key)
    return out
