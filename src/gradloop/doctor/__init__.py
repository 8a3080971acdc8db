"""The doctor: sanity checks that catch silently failing models before a long run.

    report = gradloop.doctor(model, (X, y), loss="cross_entropy", val=(Xv, yv))
    print(report)          # a table: PASS / WARN / FAIL, evidence, advice
    report.ok              # False when any check failed

Checks, in the order they run (each gives one line of evidence and one of advice):

========================  ==================================================================
data.shapes               X/y lengths, dtypes vs. the loss, train/val sample shapes
data.finite               NaN/Inf in inputs and targets
data.labels               class labels within [0, n_outputs); binary targets within [0, 1]
data.balance              class counts; warns from a 5:1 imbalance, suggests class weights
data.leakage              val rows that also occur in train (64-bit row hashes, verified)
data.variance             constant features
data.scale                features of very different scales (std ratio >= 100, |x| >= 1000)
model.output              runs on the data; outputs fit targets and loss (Trainer.fit's rules)
model.loss_fit            final Softmax/Sigmoid/LogSoftmax vs. the loss; bounded regression
model.initial_loss        untrained loss vs. chance (ln C; ln 2; predicting mean(y) for mse)
model.train_eval          eval vs. train outputs differ only through dropout/batch-norm
train.gradients           every trainable parameter gets a finite, non-zero gradient
train.nan_origin          first module producing NaN/Inf, in the forward or backward pass
train.overfit             Adam drives the loss on one small batch near zero
train.lr_find             LR range test; suggested LR = min-loss LR / 10; lr_find.png
========================  ==================================================================

A check that does not apply (no val data, a regression task) is listed in `report.skipped`.

With `step=` (the Trainer's `step(model, batch)`), the checks that train (train.*) train on the
step's loss, and the data checks run as before; the checks that compare outputs with targets
(model.output's fit rules, model.loss_fit, model.initial_loss, model.train_eval, data.labels,
data.balance) use the step's "outputs" and "targets", judged by `loss`, and are skipped with the
note "the step does not return outputs and targets" when it returns none.

Only this module loads with `import gradloop`; the checks load on the first call.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from ..names.losses import LossFn
from ..names.optim import OptimizerSpec, check_optimizer_args
from ..step import StepFn

if TYPE_CHECKING:
    from .range_test import LRFindResult
    from .report import DoctorReport

_LAZY = {"DoctorReport": ".report", "Check": ".report", "LRFindResult": ".range_test", "CHECK_NAMES": ".run"}
__all__ = ["doctor", "lr_find", "DoctorReport", "Check", "LRFindResult", "CHECK_NAMES"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def doctor(
    model: nn.Module,
    data: Any,
    loss: str | LossFn | None = "cross_entropy",
    val: Any = None,
    optimizer: OptimizerSpec = "adam",
    lr: float | None = 1e-3,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    run_dir: str | os.PathLike[str] | None = None,
    *,
    checks: Sequence[str] | None = None,
    seed: int | None = 0,
    overfit_steps: int = 200,
    overfit_samples: int = 32,
    overfit_lr: float = 3e-3,
    lr_find_steps: int = 100,
    max_samples: int = 100_000,
    step: StepFn | None = None,
) -> DoctorReport:
    """Runs the sanity checks that catch silently failing models, in seconds, before a long run.

    `data` and `val` take what `Trainer.fit` takes: `(X, y)` tensors or arrays, a Dataset, or a
    DataLoader. Faults in the data or the model never raise: each one is a failing check (an
    exception inside a check is reported as that check's failure). Bad arguments (an unknown
    loss name, batch_size=0, ...) raise ValueError/TypeError as everywhere in gradloop; `optimizer`
    and `lr` get the Trainer's checks and messages (`names.optim.check_optimizer_args`).

    The checks work on a deep copy of the model (or, if it cannot be copied, on the model itself,
    restored afterwards): the model's weights, gradients, `requires_grad` flags and per-module
    train/eval modes, and the global python/numpy/torch/CUDA RNG states, are left as they were.
    `seed` makes the checks repeatable (None: use the RNGs as they are, then restore them).

    `step(model, batch)`, as `Trainer(step=...)` takes it, computes the loss the training checks use
    (each batch is `(x, y)`, or `x` for data without targets). `loss` then only names what the step's
    "outputs" and "targets" are, for the checks that compare them (loss=None: compared by shape only);
    without them those checks are skipped. A step that raises, or returns what the Trainer refuses,
    is a failing check naming the step.

    `checks` runs only the named checks or groups ("data", "model", "train", "train.overfit");
    the step counts trade thoroughness for time. With `run_dir`, writes `doctor.json` and
    `lr_find.png` there. Returns a `DoctorReport`: `.ok`, `.checks`, `print(report)`.
    """
    from . import run
    from .context import Settings
    from .report import Check, DoctorReport

    selected = run.select(checks)
    check_optimizer_args(optimizer, lr)  # the Trainer's checks, so the doctor accepts what the Trainer accepts
    if run_dir is not None:
        run.check_writable(Path(run_dir))
    settings = Settings(overfit_steps, overfit_samples, overfit_lr, lr_find_steps, max_samples, seed)
    # Checked here, not in Settings: lr_find takes any seed the RNGs take.
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None; received: seed={seed!r}")
    started = time.perf_counter()
    with run.session(model, data, loss, val, optimizer, lr, batch_size, device, settings, step) as ctx:
        report = DoctorReport([], [])
        for name, check in selected:
            begun = time.perf_counter()
            outcome = run.run_one(ctx, name, check)
            report.timings[name] = time.perf_counter() - begun
            if isinstance(outcome, Check):
                report.checks.append(outcome)
            else:
                report.skipped.append((name, outcome))
        report.lr_find = ctx.lr_result
    report.seconds = time.perf_counter() - started
    if run_dir is not None:
        report.save(run_dir)
    return report


def lr_find(
    model: nn.Module,
    data: Any,
    loss: str | LossFn | None = "cross_entropy",
    optimizer: OptimizerSpec = "adam",
    batch_size: int = 64,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float | None = None,
    device: str | torch.device = "auto",
    seed: int | None = 0,
    plot: str | os.PathLike[str] | None = None,
    step: StepFn | None = None,
) -> LRFindResult:
    """The LR range test alone (see `gradloop.doctor.range_test` for the rule).

    Same inputs as `doctor`; an optimizer instance is cloned (class and hyperparameters) onto a
    copy of the model, so the model, the optimizer and the RNGs are left as they were. Raises
    ValueError when the data cannot be used. `smoothing` is the EMA factor (default: a window of
    about 10 steps). `plot` writes the PNG there. With `step`, the test runs on the step's loss
    (see `doctor`); a failing step raises ValueError.
    """
    from ..util import check_count, is_number
    from . import run
    from .context import Settings, StepError
    from .range_test import current_lr, range_test
    from .report import Skip

    if not (is_number(start_lr) and is_number(end_lr) and 0 < start_lr < end_lr):
        raise ValueError(f"need 0 < start_lr < end_lr; received: start_lr={start_lr!r}, end_lr={end_lr!r}")
    check_count("num_steps", num_steps)
    check_optimizer_args(optimizer, start_lr)  # the test sets every step's lr itself: "sgd" needs none here
    with run.session(model, data, loss, None, optimizer, None, batch_size, device, Settings(seed=seed), step) as ctx:
        if ctx.load_error is not None:
            raise ValueError(ctx.load_error)
        if step is not None and ctx.probe_error is not None:  # there is no model.output to see here
            raise ValueError(f"the LR range test cannot run: {ctx.probe_error}")
        try:
            result = range_test(ctx, float(start_lr), float(end_lr), num_steps, smoothing)
            result.current_lr = current_lr(ctx)
        except (Skip, StepError) as reason:
            raise ValueError(f"the LR range test cannot run: {reason}") from None
    if plot is not None:
        result.plot(plot)
    return result
