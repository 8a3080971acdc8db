"""`doctor(...)` and `lr_find(...)`: set up a working copy and the data, run the checks, clean up."""
from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..data.devices import resolve_device, to_device
from ..names.losses import CLASS_INDEX_LOSSES, LossFn, resolve_loss
from ..names.optim import OptimizerSpec, check_optimizer_args
from ..util import first_line, preserved_rng
from . import data_checks, model_checks, training_checks
from .context import Context, Settings
from .inputs import DataError, read
from .lr_find import LRFindResult, check_lr, current_lr, range_test
from .preserve import ModelSnapshot
from .report import Check, DoctorReport, Skip

CheckFn = Callable[[Context], Check]
CHECKS: tuple[tuple[str, CheckFn], ...] = (
    *data_checks.CHECKS,
    *model_checks.CHECKS,
    *training_checks.CHECKS,
    ("train.lr_find", check_lr),
)
CHECK_NAMES = tuple(name for name, _ in CHECKS)


def doctor(
    model: nn.Module,
    data: Any,
    loss: str | LossFn = "cross_entropy",
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

    `checks` runs only the named checks or groups ("data", "model", "train", "train.overfit");
    the step counts trade thoroughness for time. With `run_dir`, writes `doctor.json` and
    `lr_find.png` there. Returns a `DoctorReport`: `.ok`, `.checks`, `print(report)`.
    """
    selected = _select(checks)
    check_optimizer_args(optimizer, lr)  # the Trainer's checks, so the doctor accepts what the Trainer accepts
    if run_dir is not None:
        _check_writable(Path(run_dir))
    settings = _settings(seed, overfit_steps, overfit_samples, overfit_lr, lr_find_steps, max_samples)
    started = time.perf_counter()
    with _session(model, data, loss, val, optimizer, lr, batch_size, device, settings) as ctx:
        report = DoctorReport([], [])
        for name, check in selected:
            begun = time.perf_counter()
            outcome = _run_one(ctx, name, check)
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
    loss: str | LossFn = "cross_entropy",
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
) -> LRFindResult:
    """The LR range test alone (see `gradloop.doctor.lr_find` module docs for the rule).

    Same inputs as `doctor`; an optimizer instance is cloned (class and hyperparameters) onto a
    copy of the model, so the model, the optimizer and the RNGs are left as they were. Raises
    ValueError when the data cannot be used. `smoothing` is the EMA factor (default: a window of
    about 10 steps). `plot` writes the PNG there.
    """
    if not (isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float)) and 0 < start_lr < end_lr):
        raise ValueError(f"need 0 < start_lr < end_lr; received: start_lr={start_lr!r}, end_lr={end_lr!r}")
    _positive_int("num_steps", num_steps)
    check_optimizer_args(optimizer, start_lr)  # the test sets every step's lr itself: "sgd" needs none here
    settings = Settings(seed=seed)
    with _session(model, data, loss, None, optimizer, None, batch_size, device, settings) as ctx:
        if ctx.load_error is not None:
            raise ValueError(ctx.load_error)
        try:
            result = range_test(ctx, float(start_lr), float(end_lr), num_steps, smoothing)
            result.current_lr = current_lr(ctx)
        except Skip as reason:
            raise ValueError(f"the LR range test cannot run: {reason}") from None
    if plot is not None:
        result.plot(plot)
    return result


@contextlib.contextmanager
def _session(model: nn.Module, data: Any, loss: str | LossFn, val: Any, optimizer: OptimizerSpec, lr: float | None,
             batch_size: int, device: str | torch.device, settings: Settings) -> Iterator[Context]:
    """Checks the arguments, then yields a Context over a working copy; restores everything on exit."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; received {type(model).__name__}")
    _positive_int("batch_size", batch_size)
    loss_fn, loss_name = resolve_loss(loss)  # a loss module of a known class has its name: the same checks
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        torch.cuda.init()  # the checks draw CUDA random numbers: its states must be saved even when seed is None
    with preserved_rng(settings.seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torch's broadcasting warning: the checks report such problems
        with _working_copy(model, resolved) as (work, where):
            ctx = Context(model=work, initial=ModelSnapshot.capture(work), loss_fn=_on_device(loss_fn, where),
                          loss_name=loss_name, optimizer=optimizer, lr=lr,
                          device=where, batch_size=batch_size, settings=settings)
            ctx.param_map = {id(p): q for p, q in zip(model.parameters(), work.parameters())}
            _load(ctx, data, val)
            for step in (_probe, _select_usable, _check_fit):
                try:
                    step(ctx)
                except Exception as err:  # the user's model meeting the user's data: reported by model.output
                    ctx.probe_error = ctx.probe_error or _error_line(err)
            ctx.initial = ModelSnapshot.capture(work)  # after the probe, which materializes lazy layers
            yield ctx


@contextlib.contextmanager
def _working_copy(model: nn.Module, device: torch.device) -> Iterator[tuple[nn.Module, torch.device]]:
    """A deep copy on `device`; a model that cannot be copied is used in place and restored after."""
    try:
        work = copy.deepcopy(model).to(device)
    except Exception:  # e.g. a non-leaf tensor kept as an attribute, which deepcopy refuses
        work = None
    if work is not None:
        yield work, device
        return
    snapshot = ModelSnapshot.capture(model)
    where = next((p.device for p in model.parameters()), device)
    try:
        yield model, where
    finally:
        snapshot.restore(model)


def _on_device(loss_fn: LossFn, device: torch.device) -> LossFn:
    """A loss module with tensors (class weights) gets a copy on the model's device."""
    if isinstance(loss_fn, nn.Module):
        try:
            return copy.deepcopy(loss_fn).to(device)
        except Exception:
            return loss_fn
    return loss_fn


def _load(ctx: Context, data: Any, val: Any) -> None:
    errors = []
    for role, value in (("train", data), ("val", val)):
        if value is None and role == "val":
            continue
        try:
            setattr(ctx, role, read(value, role, ctx.settings.max_samples))
        except DataError as err:
            errors.append(str(err))
        except Exception as err:  # the doctor reports, it does not raise
            errors.append(f"reading the {role} data failed: {_error_line(err)}")
    if errors:
        ctx.load_error = "; ".join(errors)


def _probe(ctx: Context) -> None:
    """One forward pass (eval, no grad) on two samples, to learn the number of outputs."""
    train = ctx.train
    if train is None:
        return
    if train.X is not None:
        finite = torch.isfinite(train.X.reshape(train.X.shape[0], -1)).all(dim=1) if train.X.is_floating_point() \
            else torch.ones(train.X.shape[0], dtype=torch.bool)
        rows = finite.nonzero().reshape(-1)[:2]
        if rows.numel() == 0:
            return
        x: Any = train.X[rows].to(ctx.device)
    else:
        x = to_device(train.raw_batches[0][0], ctx.device)
    out = ctx.forward(x)
    if isinstance(out, torch.Tensor):
        ctx.n_outputs = int(out.shape[1]) if out.ndim >= 2 else 1


def _select_usable(ctx: Context) -> None:
    """Rows the model checks may use: finite inputs and targets, labels the model can score."""
    train = ctx.train
    if train is None or train.X is None or train.y is None:
        return
    X, y = train.X, train.y
    if X.shape[0] != y.shape[0]:
        ctx.usable, ctx.excluded = torch.zeros(0, dtype=torch.long), "X and y differ in length (see data.shapes)"
        return
    keep = torch.ones(X.shape[0], dtype=torch.bool)
    if X.is_floating_point():
        keep &= torch.isfinite(X.reshape(X.shape[0], -1)).all(dim=1)
    if y.is_floating_point():
        keep &= torch.isfinite(y.reshape(y.shape[0], -1)).all(dim=1)
    elif ctx.loss_name in CLASS_INDEX_LOSSES and ctx.n_outputs is not None:
        labels = y.reshape(y.shape[0], -1)
        keep &= ((labels >= 0) & (labels < ctx.n_outputs)).all(dim=1)
    ctx.usable = keep.nonzero().reshape(-1)
    ctx.excluded = "every row has NaN/Inf or a label outside the model's outputs (see data.finite, data.labels)"


def _check_fit(ctx: Context) -> None:
    """Whether the outputs on two usable rows fit the targets and the loss: if not, the checks that
    train or compare losses are skipped rather than all failing with the same error."""
    train = ctx.train
    if ctx.probe_error is not None or train is None or not train.has_targets or ctx.load_error is not None:
        return
    if ctx.usable is not None and ctx.usable.numel() == 0:
        return
    x, y = ctx.batch(2)  # two rows, as Trainer.fit checks: the same problem in the same words
    ctx.fit_error = model_checks.output_problem(ctx, ctx.forward(x), y)


def _error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err)}"


def _run_one(ctx: Context, name: str, check: CheckFn) -> Check | str:
    """The check's result, or the reason it was skipped; an exception becomes a failing check."""
    try:
        ctx.reset()
        return check(ctx)
    except Skip as reason:
        return str(reason)
    except Exception as err:
        return Check(name, "fail", f"the check raised {_error_line(err)}",
                     "the model or data breaks on this step; a training run would hit the same error")


def _select(names: Sequence[str] | None) -> list[tuple[str, CheckFn]]:
    if names is None:
        return list(CHECKS)
    if isinstance(names, str):
        names = [names]
    chosen = []
    for wanted in names:
        matches = [(n, f) for n, f in CHECKS if n == wanted or n.startswith(wanted + ".")]
        if not matches:
            raise ValueError(f"unknown check {wanted!r}: use a group (data, model, train) or one of {', '.join(CHECK_NAMES)}")
        chosen += [m for m in matches if m not in chosen]
    return [c for c in CHECKS if c in chosen]  # always in the documented order


def _settings(seed: int | None, overfit_steps: int, overfit_samples: int, overfit_lr: float, lr_find_steps: int,
              max_samples: int) -> Settings:
    for name, value in (("overfit_steps", overfit_steps), ("overfit_samples", overfit_samples),
                        ("lr_find_steps", lr_find_steps), ("max_samples", max_samples)):
        _positive_int(name, value)
    if isinstance(overfit_lr, bool) or not isinstance(overfit_lr, (int, float)) or not overfit_lr > 0:
        raise ValueError(f"overfit_lr must be a positive number; received: overfit_lr={overfit_lr!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None; received: seed={seed!r}")
    return Settings(overfit_steps=overfit_steps, overfit_samples=overfit_samples, overfit_lr=float(overfit_lr),
                    lr_find_steps=lr_find_steps, max_samples=max_samples, seed=seed)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; received: {name}={value!r}")


def _check_writable(directory: Path) -> None:
    """Fails before the checks run rather than after, when the report could not be saved."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".doctor-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"run_dir {str(directory)!r} cannot be written ({err.strerror}): choose a writable directory") from err
