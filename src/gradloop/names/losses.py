"""Loss functions by name. Any callable(outputs, targets) -> scalar tensor works as well."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..util import did_you_mean

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
# A loss module passed as an instance is the same loss as its name (the first one: "l1", not "mae"):
# same checks, same default metrics.
LOSS_MODULES: dict[type, str] = {factory: name for name, factory in reversed(LOSSES.items()) if isinstance(factory, type)}
CLASS_INDEX_LOSSES = ("cross_entropy", "nll")
BINARY_LOSSES = ("bce", "bce_with_logits")
CLASSIFICATION_LOSSES = CLASS_INDEX_LOSSES + BINARY_LOSSES
REGRESSION_LOSSES = ("mse", "l1", "mae", "smooth_l1", "huber")
SAME_SHAPE_LOSSES = REGRESSION_LOSSES + BINARY_LOSSES


def loss_name(loss: Any) -> str | None:
    """The canonical name of a loss given by name or as a loss module of its own class; None otherwise.

    Subclasses are not recognised: they may compute anything.

    >>> loss_name("sparse_categorical_crossentropy"), loss_name(nn.BCEWithLogitsLoss()), loss_name("hinge")
    ('cross_entropy', 'bce_with_logits', None)
    """
    if isinstance(loss, str):
        name = _ALIASES.get(loss.lower(), loss.lower())
        return name if name in LOSSES else None
    return LOSS_MODULES.get(type(loss))


def loss_task(name: str | None) -> str | None:
    """ "classification" (class indices), "binary", "regression", or None for a loss gradloop does not know."""
    if name in CLASS_INDEX_LOSSES:
        return "classification"
    if name in BINARY_LOSSES:
        return "binary"
    if name in REGRESSION_LOSSES:
        return "regression"
    return None


def resolve_loss(loss: str | LossFn) -> tuple[LossFn, str | None]:
    """The loss function and its canonical name (`loss_name`; None for a callable gradloop does not know).

    >>> resolve_loss("mse")
    (MSELoss(), 'mse')
    >>> resolve_loss("cross_entropie")
    Traceback (most recent call last):
    ...
    ValueError: unknown loss 'cross_entropie' (did you mean 'cross_entropy'?): use one of ...
    """
    if isinstance(loss, str):
        name = loss_name(loss)
        if name is None:
            raise ValueError(
                f"unknown loss {loss!r}{did_you_mean(loss.lower(), LOSSES)}: use one of "
                f"{', '.join(sorted(LOSSES))}, or pass a callable(outputs, targets) -> scalar tensor"
            )
        return LOSSES[name](), name
    if callable(loss):
        return loss, loss_name(loss)
    raise TypeError(f"loss must be a name like 'cross_entropy' or a callable(outputs, targets); received: loss={loss!r}")
