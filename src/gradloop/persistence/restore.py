"""Loading saved states into a model or an optimizer, with one clear error for a mismatch."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from ..compilation import plain_module, without_prefix
from ..util import first_line
from .checkpoint import CheckpointError


def load_model_state(model: nn.Module, state: Mapping[str, Any], source: str | os.PathLike[str]) -> None:
    """`model.load_state_dict(state)`; a checkpoint of another model is one CheckpointError naming `source`.
    A compiled model or a state saved from one (keys `_orig_mod.*`) loads as the plain module's."""
    model = plain_module(model)
    state = without_prefix(state, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    problems = [
        f"{label}: {_some(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("different shapes", resized))
        if names
    ]
    if problems:
        raise CheckpointError(f"{str(source)!r} holds weights of a different model ({'; '.join(problems)})")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{str(source)!r} cannot be loaded into this model: {type(err).__name__}: {first_line(err)}") from None


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any], source: str | os.PathLike[str]) -> None:
    """`optimizer.load_state_dict(state)`; a mismatch is one CheckpointError naming `source`."""
    try:
        optimizer.load_state_dict(dict(state))
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{str(source)!r} holds optimizer state that does not fit this optimizer ({type(optimizer).__name__}): "
            f"{type(err).__name__}: {first_line(err)}"
        ) from None


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
