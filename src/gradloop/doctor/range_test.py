"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's lr_find).

Starting from the model's initial weights, take one optimizer step per batch while the learning
rate grows exponentially from `start_lr` to `end_lr`; record each batch's loss, smooth it with a
debiased exponential moving average, and stop early once the smoothed loss exceeds `diverge`
times its minimum (or a loss is NaN/Inf).

Suggested LR (the rule): the learning rate at the minimum of the smoothed loss, divided by 10.
At the minimum the loss is about to blow up, so a tenth of it is still fast but stable; it is
less noisy than "the steepest descent" (also reported, as `steepest_lr`) on short runs. When the
smoothed loss never falls below 90% of where it started, there is no suggestion (None): the
model does not learn at any rate, a bug the overfit check explains better.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..names.optim import build_optimizer
from ..util import atomic_write
from .context import Context
from .report import Check, Skip

DIVERGE = 4.0  # smoothed loss above this many times its minimum: diverged
NO_PROGRESS = 0.9  # best smoothed loss above this share of the starting loss: it never learned
RULE = "lr at the minimum of the smoothed loss / 10"
START_LR, END_LR = 1e-7, 10.0  # the range train.lr_find tests (lr_find's defaults)


@dataclass
class LRFindResult:
    """What the range test saw: one LR and loss per step, and the suggested LR (None if none)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    min_loss_lr: float | None = None
    steepest_lr: float | None = None
    diverged_lr: float | None = None  # first LR at which the loss diverged; None if it never did
    current_lr: float | None = None  # the LR the model would be trained with, marked on the plot
    rule: str = field(default=RULE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figure(self) -> Any:
        """A matplotlib Figure of loss vs. LR (log scale) with the suggestion marked."""
        from matplotlib.figure import Figure  # imported here: it takes a while

        fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, color="tab:blue", alpha=0.3, label="loss per batch")
        ax.plot(self.lrs, self.smoothed, color="tab:blue", label="smoothed")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="tab:green", linestyle="--", label=f"suggested {self.suggestion:.2g}")
        if self.current_lr is not None:
            ax.axvline(self.current_lr, color="tab:red", linestyle=":", label=f"current {self.current_lr:.2g}")
        finite = [v for v in self.smoothed if math.isfinite(v)]
        if finite:  # the divergence would squash the interesting part of the curve
            low = min(finite + [v for v in self.losses if math.isfinite(v)])
            high = max(finite[: max(3, len(finite) // 10)])
            ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.25 * (high - low + 1e-12))
        ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR range test")
        ax.grid(True, alpha=0.3)
        ax.legend()
        return fig

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Writes the figure as a PNG (atomically) and returns the path."""
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png")
        return atomic_write(path, buffer.getvalue(), durable=False)


def make_optimizer(ctx: Context, lr: float | None) -> torch.optim.Optimizer:
    """A fresh optimizer of the user's kind over the working copy's parameters; `lr` is the one a name is
    built with (None: its default). The range test sets every step's lr itself."""
    spec = ctx.optimizer
    params = [p for p in ctx.model.parameters() if p.requires_grad]
    if not params:
        raise Skip("the model has no trainable parameters (see train.gradients)")
    if isinstance(spec, torch.optim.Optimizer):  # same class and hyperparameters, the copy's parameters
        groups = []
        for group in spec.param_groups:
            mapped = [ctx.param_map[id(p)] for p in group["params"] if id(p) in ctx.param_map]
            if mapped:
                groups.append({**group, "params": mapped})
        try:
            return type(spec)(groups or params, **spec.defaults)
        except TypeError:  # a custom optimizer whose defaults are not its arguments
            return type(spec)(groups or params)
    return build_optimizer(spec, ctx.model, lr)  # a name or a factory: built as the Trainer builds it


def range_test(ctx: Context, start_lr: float, end_lr: float, num_steps: int, smoothing: float | None = None) -> LRFindResult:
    """Runs the test on the working copy (from its current weights); see the module docstring."""
    ctx.need_model_batch()
    beta = smoothing if smoothing is not None else min(0.98, max(0.5, 1 - 10 / num_steps))  # ~10-step window
    optimizer = make_optimizer(ctx, start_lr)
    factor = (end_lr / start_lr) ** (1 / max(num_steps - 1, 1))
    batches = ctx.stream(ctx.batch_size)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, diverged = 0.0, math.inf, None
    ctx.model.train()
    for step in range(num_steps):
        lr = start_lr * factor**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = ctx.loss_of(x, y)
        value = loss.detach().item()  # a host sync per step: the stopping rule needs the value
        lrs.append(lr)
        losses.append(value)
        if not math.isfinite(value):
            if step == 0:
                raise Skip("the loss is not finite at the initial weights (see train.nan_origin)")
            smoothed.append(math.inf)
            diverged = lr
            break
        average = beta * average + (1 - beta) * value
        smoothed.append(average / (1 - beta ** (step + 1)))
        best = min(best, smoothed[-1])
        if step >= 3 and smoothed[-1] > DIVERGE * best:
            diverged = lr
            break
        loss.backward()
        optimizer.step()
    return _result(lrs, losses, smoothed, diverged)


def _result(lrs: list[float], losses: list[float], smoothed: list[float], diverged: float | None) -> LRFindResult:
    finite = np.array([v if math.isfinite(v) else np.inf for v in smoothed])  # the first is finite: range_test skips otherwise
    lowest = int(np.argmin(finite))
    start = float(np.mean([v for v in losses[:3] if math.isfinite(v)]))
    steepest = None
    if lowest >= 2:
        slopes = np.gradient(finite[: lowest + 1], np.log(lrs[: lowest + 1]))
        steepest = lrs[int(np.argmin(slopes))]
    learned = finite[lowest] < NO_PROGRESS * start
    return LRFindResult(
        lrs, losses, smoothed, lrs[lowest] / 10 if learned else None, min_loss_lr=lrs[lowest], steepest_lr=steepest, diverged_lr=diverged
    )


def current_lr(ctx: Context) -> float | None:
    """The LR training would start with: the optimizer's own, or `lr`, or the named optimizer's default."""
    if isinstance(ctx.optimizer, torch.optim.Optimizer):
        return float(ctx.optimizer.param_groups[0]["lr"])
    if ctx.lr is not None:
        return float(ctx.lr)
    try:
        return float(make_optimizer(ctx, None).param_groups[0]["lr"])
    except ValueError:  # a name without a default LR ("sgd"): nothing to compare with
        return None


def check_lr(ctx: Context) -> Check:
    result = range_test(ctx, START_LR, END_LR, ctx.settings.lr_find_steps)
    yours = result.current_lr = current_lr(ctx)
    ctx.lr_result = result
    if result.suggestion is None:
        message = (
            f"the loss did not fall below {100 * NO_PROGRESS:.0f}% of its start at any LR "
            f"from {START_LR:g} to {result.lrs[-1]:.2g} ({len(result.lrs)} steps)"
        )
        advice = "the model does not learn at any rate: see train.overfit and train.gradients"
        return Check("train.lr_find", "warn", message, advice)
    evidence = f"loss lowest at lr {result.min_loss_lr:.2g}"
    if result.diverged_lr is not None:
        evidence += f", diverges from {result.diverged_lr:.2g}"
    evidence += f"; suggested lr {result.suggestion:.2g} (min-loss lr / 10)"
    if yours is None:
        return Check("train.lr_find", "pass", evidence)
    evidence += f"; current lr {yours:.2g}"
    use = f"use lr={result.suggestion:.2g} (see lr_find.png)"
    if result.diverged_lr is not None and yours >= result.diverged_lr:
        return Check("train.lr_find", "fail", evidence + ": training at the current lr diverges", use)
    if result.min_loss_lr is not None and yours > result.min_loss_lr:
        return Check("train.lr_find", "warn", evidence + ": the current lr is past the loss minimum, close to divergence", use)
    if yours < result.suggestion / 1000:
        return Check("train.lr_find", "warn", evidence + ": the current lr is over 1000x below it, training will be slow", use)
    return Check("train.lr_find", "pass", evidence)
