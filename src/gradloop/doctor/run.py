"""What `doctor(...)` and `lr_find(...)` run on: a working copy of the model, the data, the selected checks."""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..checks import eval_mode
from ..data.devices import resolve_device, to_device
from ..names.losses import CLASS_INDEX_LOSSES, LossFn, resolve_loss
from ..names.optim import OptimizerSpec
from ..step import StepFn
from ..util import check_count, first_line, preserved_rng
from . import data_checks, model_checks, training_checks
from .context import Context, Settings, StepError
from .inputs import DataError, read
from .preserve import ModelSnapshot
from .range_test import check_lr
from .report import Check, Skip

CheckFn = Callable[[Context], Check]
CHECKS: tuple[tuple[str, CheckFn], ...] = (
    *data_checks.CHECKS,
    *model_checks.CHECKS,
    *training_checks.CHECKS,
    ("train.lr_find", check_lr),
)
CHECK_NAMES = tuple(name for name, _ in CHECKS)
STEP_ADVICE = "fix step(model, batch): Trainer.fit calls it on every batch and would fail the same way"


@contextlib.contextmanager
def session(
    model: nn.Module,
    data: Any,
    loss: str | LossFn | None,
    val: Any,
    optimizer: OptimizerSpec,
    lr: float | None,
    batch_size: int,
    device: str | torch.device,
    settings: Settings,
    step: StepFn | None = None,
) -> Iterator[Context]:
    """Checks the arguments, then yields a Context over a working copy; restores everything on exit.

    With a `step`, the step's loss is what the checks train on; `loss` (None allowed) only says how
    the step's "outputs" compare with its "targets", for the checks that look at them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; received {type(model).__name__}")
    check_count("batch_size", batch_size)
    if step is not None and not callable(step):
        raise TypeError(f"step must be a function (model, batch) -> loss or dict with 'loss'; received: step={step!r}")
    # Without a step, loss=None is refused by resolve_loss; a loss module of a known class has its name.
    loss_fn, loss_name = resolve_loss(loss) if loss is not None or step is None else (None, None)
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        torch.cuda.init()  # the checks draw CUDA random numbers: its states must be saved even when seed is None
    with preserved_rng(settings.seed), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torch's broadcasting warning: the checks report such problems
        with _working_copy(model, resolved) as (work, where):
            ctx = Context(
                model=work,
                initial=ModelSnapshot.capture(work),
                loss_fn=_on_device(loss_fn, where) if loss_fn is not None else None,
                loss_name=loss_name,
                optimizer=optimizer,
                lr=lr,
                device=where,
                batch_size=batch_size,
                settings=settings,
                step=step,
            )
            ctx.param_map = {id(p): q for p, q in zip(model.parameters(), work.parameters())}
            _load(ctx, data, val)
            for stage in (_probe, _select_usable, _check_fit):
                try:
                    stage(ctx)
                except StepError as err:  # the user's step meeting the user's data: reported by model.output
                    ctx.probe_error = ctx.probe_error or str(err)
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
    """One forward pass (eval, no grad) on two samples, to learn the number of outputs; with a step,
    one run of the step, to learn whether it returns outputs and targets (and how many outputs)."""
    train = ctx.train
    if train is None:
        return
    if train.X is not None:
        rows = _finite_rows(train.X).nonzero().reshape(-1)[:2]
        if rows.numel() == 0:
            return
        x: Any = train.X[rows].to(ctx.device)
        y = train.y[rows].to(ctx.device) if train.y is not None else None
    else:
        x, y = to_device(train.raw_batches[0], ctx.device)
    if ctx.step is not None:
        with torch.no_grad(), eval_mode(ctx.model):
            result = ctx.run_step(x, y)
        ctx.step_outputs = result.outputs is not None and result.targets is not None
        out = result.outputs
    else:
        out, _ = ctx.outputs_of(x, y)
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
    keep = _finite_rows(X)
    if y.is_floating_point():
        keep &= _finite_rows(y)
    elif ctx.loss_name in CLASS_INDEX_LOSSES and ctx.n_outputs is not None:
        labels = y.reshape(y.shape[0], -1)
        keep &= ((labels >= 0) & (labels < ctx.n_outputs)).all(dim=1)
    ctx.usable = keep.nonzero().reshape(-1)
    ctx.excluded = "every row has NaN/Inf or a label outside the model's outputs (see data.finite, data.labels)"


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    """Which rows hold no NaN/Inf (every row of an integer tensor)."""
    if not t.is_floating_point():
        return torch.ones(t.shape[0], dtype=torch.bool)
    return torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)


def _check_fit(ctx: Context) -> None:
    """Whether the outputs on two usable rows fit the targets and the loss: if not, the checks that
    train or compare losses are skipped rather than all failing with the same error."""
    try:  # nothing to compare where the checks skip anyway (fit_error itself is still None here)
        ctx.need_model_batch()
        ctx.need_outputs()  # a step without outputs: its loss is all there is
    except Skip:
        return
    x, y = ctx.batch(2)  # two rows, as Trainer.fit checks: the same problem in the same words
    ctx.fit_error = model_checks.output_problem(ctx, *ctx.outputs_of(x, y))


def _error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err)}"


def run_one(ctx: Context, name: str, check: CheckFn) -> Check | str:
    """The check's result, or the reason it was skipped; an exception becomes a failing check."""
    try:
        ctx.reset()
        return check(ctx)
    except Skip as reason:
        return str(reason)
    except StepError as err:
        return Check(name, "fail", str(err), STEP_ADVICE)
    except Exception as err:
        advice = "the model or data breaks on this step; a training run would hit the same error"
        return Check(name, "fail", f"the check raised {_error_line(err)}", advice)


def select(names: Sequence[str] | None) -> list[tuple[str, CheckFn]]:
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


def check_writable(directory: Path) -> None:
    """Fails before the checks run rather than after, when the report could not be saved."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".doctor-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"run_dir {str(directory)!r} cannot be written ({err.strerror}): choose a writable directory") from err
