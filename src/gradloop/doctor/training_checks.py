"""Checks that run backward passes and optimizer steps: gradient flow, where NaN/Inf comes from,
and whether the model can overfit one small batch. The loss of a batch is `Context.loss_of`: the
step's, with a step, as training computes it."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..checks import eval_mode
from ..data.devices import leaves
from .context import Context
from .inputs import length
from .report import Check, Skip, listed

# Overfitting one small batch must take the loss "near zero": below this share of where it started.
OVERFIT_PASS, OVERFIT_WARN = 0.1, 0.5


def check_gradients(ctx: Context) -> Check:
    ctx.need_model_batch()
    x, y = ctx.batch(ctx.batch_size)
    ctx.model.train()
    named = list(ctx.model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    frozen = [n for n, p in named if not p.requires_grad]
    if not trainable:
        advice = "unfreeze the layers to train with p.requires_grad_(True)"
        return Check("train.gradients", "fail", f"the model has no trainable parameters (all {len(named)} are frozen)", advice)
    loss = ctx.loss_of(x, y)
    if not bool(torch.isfinite(loss)):
        raise Skip("the loss is not finite, so gradients are meaningless (see train.nan_origin)")
    loss.backward()
    missing = [n for n, p in trainable if p.grad is None]
    broken = [n for n, p in trainable if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    zero = [n for n, p in trainable if p.grad is not None and not bool(p.grad.any())]  # (NaN counts as non-zero)
    frozen_note = f"; frozen (requires_grad=False): {listed(frozen)}" if frozen else ""
    problems = [
        f"{what}: {listed(names)}"
        for what, names in (
            ("no gradient (unused, or cut off by .detach(), .data, .item() or torch.no_grad())", missing),
            ("zero gradient (multiplied by 0, or dead units)", zero),
            ("NaN/Inf gradient", broken),
        )
        if names
    ]
    if problems:
        message = (
            f"{sum(map(len, (missing, zero, broken)))} of {len(trainable)} trainable parameters get no usable gradient - "
            + "; ".join(problems)
            + frozen_note
        )
        advice = "every layer must be on the path from input to loss without .detach()/.data/no_grad; remove layers forward() never uses"
        return Check("train.gradients", "fail", message, advice)
    weights = sum(p.numel() for _, p in trainable)
    evidence = f"all {len(trainable)} trainable parameters ({weights:,} weights) get finite, non-zero gradients"
    if frozen:
        advice = "frozen on purpose (fine-tuning)? then ignore this; otherwise p.requires_grad_(True)"
        return Check("train.gradients", "warn", evidence + frozen_note, advice)
    return Check("train.gradients", "pass", evidence)


@dataclass
class _Trace:
    """Non-finite values seen by the hooks, in the order they happened."""

    forward: list[tuple[str, nn.Module, bool, str]] = field(default_factory=list)  # (name, module, inputs finite, caller)
    backward: list[tuple[int, str, str, bool]] = field(default_factory=list)  # (tensor id, module, "in"/"out", finite)


def check_nan_origin(ctx: Context) -> Check:
    ctx.need_model_batch()
    x, y = ctx.batch(ctx.batch_size)
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        return Check("train.nan_origin", "fail", "the input batch already contains NaN/Inf", "see data.finite")
    ctx.model.train()
    trace = _Trace()
    with _hooks(ctx.model, trace):
        loss = ctx.loss_of(x, y)
        if trace.forward:
            name, module, inputs_finite, caller = trace.forward[0]
            if not inputs_finite:  # the value went bad in plain code between module calls
                origin = (
                    f"plain code in the forward() of {_label(caller, ctx.model.get_submodule(caller))}: "
                    f"{_label(name, module)} already received NaN/Inf"
                )
            elif any(True for _ in module.children()):
                origin = f"plain code in the forward() of {_label(name, module)} (none of its submodules output NaN/Inf)"
            else:
                origin = f"{_label(name, module)}, from finite inputs"
            if bool(torch.isfinite(loss)):
                advice = "masked NaN still poisons gradients: guard the operation (clamp before log/sqrt, add eps to divisors)"
                return Check("train.nan_origin", "warn", f"forward pass: {origin} outputs NaN/Inf, yet the loss is finite", advice)
            advice = "guard the operation: clamp before log/sqrt (x.clamp_min(1e-8)), add eps to divisors, lower the input scale"
            return Check("train.nan_origin", "fail", f"forward pass: the first NaN/Inf comes from {origin}", advice)
        if not bool(torch.isfinite(loss)):
            message = f"forward pass: every module output is finite, but the loss is {loss.detach().item()}"
            advice = (
                "the step's own code produces it: check what it computes the loss from (e.g. log of 0)"
                if ctx.step is not None
                else "the loss function produces it: check its inputs' range (e.g. log of 0 in a custom loss)"
            )
            return Check("train.nan_origin", "fail", message, advice)
        loss.backward()
    origin = _backward_origin(ctx.model, trace)
    if origin is not None:
        advice = "an operation with an unbounded derivative (sqrt or norm at 0, log near 0, division by ~0): add an eps"
        return Check("train.nan_origin", "fail", f"backward pass (the forward pass is finite): {origin}", advice)
    evidence = f"forward and backward passes are finite on a batch of {length(x)} (every module's output and gradient checked)"
    return Check("train.nan_origin", "pass", evidence)


@contextlib.contextmanager
def _hooks(model: nn.Module, trace: _Trace) -> Iterator[None]:
    """Forward hooks that note non-finite outputs, and tensor hooks that note non-finite gradients
    of each module's inputs and outputs. Removed on exit, whatever happened."""
    names = {module: name for name, module in model.named_modules()}
    stack: list[str] = []  # modules whose forward() is running, outermost first

    def watch_grad(tensor: torch.Tensor, name: str, kind: str) -> None:
        if tensor.requires_grad:
            key = id(tensor)
            tensor.register_hook(lambda g: trace.backward.append((key, name, kind, _finite(g))))

    def pre(module: nn.Module, inputs: Any) -> None:
        stack.append(names[module])
        for tensor in leaves(inputs):
            watch_grad(tensor, names[module], "in")

    def post(module: nn.Module, inputs: Any, output: Any) -> None:
        name = names[module]
        if stack and stack[-1] == name:
            stack.pop()
        outputs = list(leaves(output))
        if not all(_finite(t) for t in outputs):
            trace.forward.append((name, module, all(_finite(t) for t in leaves(inputs)), stack[-1] if stack else ""))
        for tensor in outputs:
            watch_grad(tensor, name, "out")

    handles = [module.register_forward_pre_hook(pre) for module in names]
    handles += [module.register_forward_hook(post) for module in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _backward_origin(model: nn.Module, trace: _Trace) -> str | None:
    """The module whose backward turned finite gradients (w.r.t. its output) into non-finite ones
    (w.r.t. its inputs or own parameters); events arrive in backward order."""
    out_finite: dict[str, bool] = {}
    for _, name, kind, finite in trace.backward:
        if kind == "out":
            out_finite[name] = out_finite.get(name, True) and finite
    candidates = [(key, name) for key, name, kind, finite in trace.backward if kind == "in" and not finite and out_finite.get(name, True)]
    if candidates:
        # A container and its first child see the same input tensor: name the innermost one.
        first = candidates[0][0]
        name = max((n for k, n in candidates if k == first), key=lambda n: n.count(".") + bool(n))
        return f"{_label(name, model.get_submodule(name))} turns finite gradients into NaN/Inf"
    for name, module in model.named_modules():
        bad = [n for n, p in module.named_parameters(recurse=False) if p.grad is not None and not _finite(p.grad)]
        if bad and out_finite.get(name, True):
            return f"{_label(name, module)} gives its parameters {', '.join(bad)} NaN/Inf gradients"
    first_bad = next(((name, kind) for _, name, kind, finite in trace.backward if not finite), None)
    if first_bad is not None:
        where = "the loss" if first_bad[0] == "" else f"code after {_label(first_bad[0], model.get_submodule(first_bad[0]))}"
        return f"the gradient of {where} is the first NaN/Inf (plain code, not a module)"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not _finite(p.grad)]
    return f"parameters {listed(bad)} get NaN/Inf gradients" if bad else None


def check_overfit(ctx: Context) -> Check:
    ctx.need_model_batch()
    settings = ctx.settings
    x, y = ctx.batch(settings.overfit_samples)
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    if not params:
        raise Skip("no trainable parameters (see train.gradients)")
    start = _eval_loss(ctx, x, y)
    if not math.isfinite(start):
        raise Skip("the initial loss is not finite (see train.nan_origin)")
    optimizer = torch.optim.Adam(params, lr=settings.overfit_lr)
    ctx.model.train()
    for steps in range(1, settings.overfit_steps + 1):  # overfit_steps >= 1: steps is always set
        optimizer.zero_grad(set_to_none=True)
        loss = ctx.loss_of(x, y)
        loss.backward()
        optimizer.step()
        if steps % 10 == 0 or steps == settings.overfit_steps:  # one host sync per 10 steps
            value = loss.detach().item()
            if not math.isfinite(value):
                message = f"the loss became {value} after {steps} steps of Adam(lr={settings.overfit_lr:g}) on one batch of {length(x)}"
                advice = "see train.nan_origin; lower the learning rate or clip gradients"
                return Check("train.overfit", "fail", message, advice)
            if value < 1e-3 * start:
                break
    end = _eval_loss(ctx, x, y)
    evidence = f"loss on one batch of {length(x)} went from {start:.4g} to {end:.4g} in {steps} steps of Adam(lr={settings.overfit_lr:g})"
    ratio = end / start if start > 0 else 0.0
    if not math.isfinite(end) or ratio > OVERFIT_WARN:
        advice = (
            "a model that cannot memorize a few samples has a bug: outputs cut off or scaled to 0, wrong targets or "
            "loss, frozen layers, or too much regularization"
        )
        return Check("train.overfit", "fail", evidence, advice)
    if ratio > OVERFIT_PASS:
        advice = "give it more steps (overfit_steps) or capacity, less dropout/weight decay, or check the loss"
        return Check("train.overfit", "warn", evidence + f" ({100 * ratio:.0f}% of the start, not near zero)", advice)
    return Check("train.overfit", "pass", evidence)


def _eval_loss(ctx: Context, x: Any, y: Any) -> float:
    with torch.no_grad(), eval_mode(ctx.model):
        return float(ctx.loss_of(x, y))


def _finite(tensor: torch.Tensor) -> bool:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    return bool(torch.isfinite(tensor).all())


def _label(name: str, module: nn.Module) -> str:
    return f"module '{name}' ({type(module).__name__})" if name else f"the model ({type(module).__name__})"


CHECKS: tuple[tuple[str, Callable[[Context], Check]], ...] = (
    ("train.gradients", check_gradients),
    ("train.nan_origin", check_nan_origin),
    ("train.overfit", check_overfit),
)
