"""torch.compile for the Trainer: the plain module holds the state, a compiled callable runs the forwards.

Three ways a model arrives compiled, all trained alike:

    Trainer(model, compile=True | {...})   the Trainer compiles it: `torch.compile(model, **options)`
    Trainer(torch.compile(model))          the user's OptimizedModule (its `_orig_mod` is the plain module)
    model.compile(); Trainer(model)        compiled in place: `model.__call__` runs the compiled forward

In every case `trainer.model` is the plain module (state_dict keys without `_orig_mod.`), and the
training and evaluation forwards run through the compiled callable. Under DDP the compiled module
is what DDP wraps: torch's advice is to compile the inner module, not the DDP wrapper.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Mapping

import torch
from torch import nn

from .util import did_you_mean, first_line

PREFIX = "_orig_mod."  # what an OptimizedModule puts before each key of its module's state_dict


def compile_options(compile: Any) -> dict[str, Any] | None:
    """`compile=` checked: None for no compiling, else the keyword arguments for `torch.compile`."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return {}
    if not isinstance(compile, Mapping):
        raise TypeError(f"compile must be True, False or a dict of torch.compile options; received: compile={compile!r}")
    accepted = [name for name in inspect.signature(torch.compile).parameters if name != "model"]
    for key in compile:
        if key not in accepted:
            raise ValueError(
                f"compile has an unknown option {key!r}{did_you_mean(str(key), accepted)}: torch.compile accepts {', '.join(accepted)}"
            )
    return dict(compile)


def is_compiled(model: nn.Module) -> bool:
    """Compiled by the user: `torch.compile(model)` or `model.compile()`."""
    return _is_optimized_module(model) or getattr(model, "_compiled_call_impl", None) is not None


def plain_module(model: nn.Module) -> nn.Module:
    """The module whose state is saved: the one inside `torch.compile(model)`, else the model itself."""
    return model._orig_mod if _is_optimized_module(model) else model  # type: ignore[return-value]


def compiled_forward(model: nn.Module, plain: nn.Module, options: dict[str, Any] | None) -> nn.Module:
    """The module the forwards run through: `model` as the user passed it (compiled or not), or `plain`
    compiled with `options`. A one-line ValueError when torch.compile refuses the options."""
    if options is None:
        return model
    if is_compiled(model):
        raise ValueError(
            "the model is already compiled (torch.compile(model) or model.compile()) and compile= asks to compile it "
            "again: pass the plain module with compile=..., or the compiled one with compile=False"
        )
    try:
        return torch.compile(plain, **options)  # type: ignore[return-value]  # an OptimizedModule
    except Exception as err:  # an unknown mode or backend, mode together with options, ...
        raise ValueError(f"torch.compile refuses compile={options!r}: {type(err).__name__}: {first_line(err)}") from None


def without_prefix(state: Mapping[str, Any], model: nn.Module) -> Mapping[str, Any]:
    """A state dict saved from `torch.compile(model)` (keys `_orig_mod.*`) made to fit the plain `model`."""
    if not state or not all(key.startswith(PREFIX) for key in state) or any(key.startswith(PREFIX) for key in model.state_dict()):
        return state
    return {key[len(PREFIX) :]: value for key, value in state.items()}


def _is_optimized_module(model: nn.Module) -> bool:
    """`torch.compile(module)`'s OptimizedModule; without torch._dynamo imported there is none (and importing it
    costs over a second, so it is not imported here)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)
