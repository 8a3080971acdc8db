"""Optimizers by name, given as an instance, or built by a factory from the parameters."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch

from ..util import did_you_mean, is_number

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
}
# foreach gives the same bits as the default for-loop on CPU for these (not for nadam, radam)
FOREACH_IDENTICAL = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax")
OptimizerSpec = str | torch.optim.Optimizer | Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def build_optimizer(
    spec: OptimizerSpec, model: torch.nn.Module, lr: float | None, options: dict[str, Any] | None = None
) -> torch.optim.Optimizer:
    """Builds the optimizer over the model's trainable parameters.

    A name uses torch's defaults for everything except `lr` and `options`. An instance is used
    as given (its parameters must be the model's). A callable is called with the parameters.
    """
    check_optimizer_args(spec, lr, options)
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(spec, torch.optim.Optimizer):
        _check_owns_model(spec, model)
        return spec
    if isinstance(spec, str):
        name = spec.lower()
        if not params:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        kwargs = dict(options or {})
        if lr is not None:
            kwargs["lr"] = lr
        if name in FOREACH_IDENTICAL and not {"foreach", "fused"} & kwargs.keys() and all(p.device.type == "cpu" for p in params):
            # On CPU torch loops over the parameters one by one; its foreach implementation gives
            # bit-identical weights (checked on torch 2.13) with fewer calls. (fused is faster still
            # but rounds differently: results would no longer match torch.optim.Adam(params, lr).)
            kwargs["foreach"] = True
        try:
            return OPTIMIZERS[name](params, **kwargs)
        except TypeError as err:
            raise TypeError(f"optimizer {spec!r} rejected its options {kwargs}: {err}") from None
    optimizer = spec(params)  # a factory: check_optimizer_args accepts nothing else
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"the optimizer factory must return a torch.optim.Optimizer; it returned {type(optimizer).__name__}")
    return optimizer


def check_optimizer_args(spec: Any, lr: Any, options: dict[str, Any] | None = None) -> None:
    """The checks every place that takes an optimizer makes (Trainer, doctor, command line):
    a positive `lr`, a known name (with did-you-mean), a learning rate for SGD, `options` only
    with a name. Raises ValueError or TypeError naming the value and the fix."""
    if lr is not None and (not is_number(lr) or not lr > 0):
        raise ValueError(f"lr must be a positive number; received: lr={lr!r}")
    if isinstance(spec, str):
        name = spec.lower()
        if name not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {spec!r}{did_you_mean(name, OPTIMIZERS)}: use one of "
                f"{', '.join(OPTIMIZERS)}, a torch.optim.Optimizer, or a callable params -> optimizer"
            )
        if name == "sgd" and lr is None and "lr" not in (options or {}):
            raise ValueError("optimizer='sgd' needs a learning rate: pass lr=..., e.g. lr=0.01")
        return
    if isinstance(spec, torch.optim.Optimizer):
        if options:
            raise ValueError("optimizer_options only apply to an optimizer given by name")
        return
    if not callable(spec):
        raise TypeError(
            f"optimizer must be a name like 'adam', a torch.optim.Optimizer, or a callable params -> optimizer; "
            f"received: optimizer={spec!r}"
        )


def _check_owns_model(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    model_params = {id(p) for p in model.parameters()}
    if any(id(param) not in model_params for group in optimizer.param_groups for param in group["params"]):
        raise ValueError(
            "the optimizer holds parameters that are not the model's: build it from model.parameters() of the model passed to Trainer"
        )


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer's `step` takes a closure it must call (torch.optim.LBFGS)."""
    closure = inspect.signature(optimizer.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def check_closure_settings(optimizer: torch.optim.Optimizer, accumulate: int, clip: float | None, precision: str) -> None:
    """What an optimizer that re-evaluates the batch itself cannot be combined with (`precision`: a canonical name)."""
    name = type(optimizer).__name__
    if accumulate != 1:
        raise ValueError(
            f"{name} re-evaluates each batch itself (a closure): it cannot accumulate gradients; use accumulate_grad_batches=1"
        )
    if clip is not None:
        raise ValueError(f"{name} computes its own steps from the gradients of its closure: grad_clip_norm does not apply; remove it")
    if precision == "16-mixed":
        raise ValueError(f"{name} needs a closure, which torch's GradScaler cannot step: use precision='bf16-mixed' or '32'")
