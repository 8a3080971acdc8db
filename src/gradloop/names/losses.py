"""Loss functions by name. Any callable(outputs, targets) -> scalar tensor works as well."""
from __future__ import annotations

import difflib
from typing import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSSES: dict[str, Callable[[], nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "nll": nn.NLLLoss,
    "mse": nn.MSELoss,
    "l1": nn.L1Loss,
    "mae": nn.L1Loss,
    "smooth_l1": nn.SmoothL1Loss,
    "huber": nn.HuberLoss,
    "bce": nn.BCELoss,
    "bce_with_logits": nn.BCEWithLogitsLoss,
    "kl_div": lambda: nn.KLDivLoss(reduction="batchmean"),
}
_ALIASES = {
    "crossentropy": "cross_entropy",
    "categorical_crossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy",
    "mean_squared_error": "mse",
    "mean_absolute_error": "l1",
    "binary_crossentropy": "bce",
    "binary_cross_entropy": "bce",
    "binary_cross_entropy_with_logits": "bce_with_logits",
}
CLASS_INDEX_LOSSES = ("cross_entropy", "nll")
CLASSIFICATION_LOSSES = ("cross_entropy", "nll", "bce", "bce_with_logits")
SAME_SHAPE_LOSSES = ("mse", "l1", "mae", "smooth_l1", "huber", "bce", "bce_with_logits")


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_loss(loss: str | LossFn) -> tuple[LossFn, str | None]:
    """Returns the loss function and its canonical name (None for a user callable)."""
    if isinstance(loss, str):
        name = _ALIASES.get(loss.lower(), loss.lower())
        if name not in LOSSES:
            raise ValueError(
                f"unknown loss {loss!r}{suggest(loss.lower(), list(LOSSES))}: use one of "
                f"{', '.join(sorted(LOSSES))}, or pass a callable(outputs, targets) -> scalar tensor"
            )
        return LOSSES[name](), name
    if callable(loss):
        return loss, None
    raise TypeError(f"loss must be a name like 'cross_entropy' or a callable(outputs, targets); received: loss={loss!r}")
