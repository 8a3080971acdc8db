"""Checks run before the first step: does the model's output fit the targets and the loss?"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .data import fsdp
from .data.batches import Batches, TensorBatches
from .names.losses import BINARY_LOSSES, CLASS_INDEX_LOSSES, SAME_SHAPE_LOSSES, LossFn
from .names.metrics import Metric
from .step import Step, StepResult, batch_size_of, call_model, describe, logits_of, own_loss
from .util import first_line, preserved_rng


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts every module in eval mode and restores each module's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@preserved_rng()  # a random-augmenting Dataset or a model that samples must not shift the user's RNG
def check_model_fits_data(
    model: nn.Module, batches: Batches, step: Step, metrics: Sequence[Metric], role: str = "train"
) -> list[str] | None:
    """Runs the step in eval mode on two samples and checks outputs against targets, loss and metrics.

    Draws no random numbers and changes no state. Raises ValueError or TypeError naming the problem
    and the fix. Returns the names of the values the step logs besides the loss (None when the data
    cannot be sampled ahead, e.g. an IterableDataset: the first batch tells then).
    """
    sample = batches.peek(2)
    if sample is None:
        return None
    with fsdp.inference(model), eval_mode(model):
        if step.custom:
            result = _run_user_step(model, sample, step, role)
            outputs, targets, values = result.outputs, result.targets, list(result.values)
        else:
            outputs, targets = _run_default_step(model, batches, sample, step, role)
            values = []
        if metrics and (outputs is None or targets is None):
            raise ValueError(
                f"metrics {[m.name for m in metrics]} need outputs and targets, but the step gives none: return "
                "'outputs' and 'targets' in the dict step(model, batch) returns, or pass metrics=[]"
            )
        for metric in metrics:
            try:
                metric.check(outputs, targets, batch_size_of(targets))
            except Exception as err:
                raise ValueError(
                    f"metric {metric.name!r} cannot compare model outputs {describe(outputs)} with targets "
                    f"{describe(targets)}: {type(err).__name__}: {first_line(err)}"
                ) from err
    return values


def _run_user_step(model: nn.Module, sample: Any, step: Step, role: str) -> StepResult:
    try:
        return step(model, sample)
    except Exception as err:  # any failure here is the user's step meeting the user's data
        if isinstance(err, (ValueError, TypeError)) and "step(model, batch)" in str(err):
            raise  # the returned value is wrong: that message says how
        raise ValueError(f"step(model, batch) fails on a {role} batch {describe(sample)}: {type(err).__name__}: {first_line(err)}") from err


def _run_default_step(model: nn.Module, batches: Batches, sample: Any, step: Step, role: str) -> tuple[Any, Any]:
    """The outputs and targets metrics compare, once the model and the loss have run on the sample."""
    inputs, targets = step.split(sample, needs_targets=step.loss_fn is not None)
    try:
        output = call_model(model, inputs)
    except Exception as err:  # any failure here is the user's model meeting the user's data
        fix = "Make the model's first layer accept this input shape"
        if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
            fix = f"The inputs are {str(inputs.dtype).replace('torch.', '')}: convert them with X.float()"
        raise ValueError(
            f"the model cannot process the {role} inputs (a batch of shape {describe(inputs)}): "
            f"{type(err).__name__}: {first_line(err)}. {fix}"
        ) from err
    if step.loss_fn is None:
        own_loss(output)  # raises when the model computes no loss of its own
        return logits_of(output), targets
    problem = loss_problem(step.loss_fn, step.loss_name, output, targets, role)
    if problem is not None:
        raise (ValueError if isinstance(output, torch.Tensor) else TypeError)(problem)
    if step.loss_name in CLASS_INDEX_LOSSES and output.ndim >= 2:
        labels = batches.targets if isinstance(batches, TensorBatches) else None
        dataset = getattr(getattr(batches, "loader", None), "dataset", None)  # a DataLoader's, batched as given or by index
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:  # labels in memory: check them all
            labels = dataset.tensors[1]
        if labels is not None:
            _raise(label_range_problem(output.shape[1], labels, role, getattr(step.loss_fn, "ignore_index", None)))
    return output, targets


def loss_problem(loss_fn: LossFn, loss_name: str | None, outputs: Any, targets: Any, role: str) -> str | None:
    """What keeps `loss_fn(outputs, targets)` from training, and the fix, or None: outputs that are not
    a tensor or do not fit the targets (`fit_problem`), a loss that raises or returns no scalar.

    The Trainer raises it before the first step (a TypeError for outputs that are not a tensor); the doctor reports it.
    """
    if not isinstance(outputs, torch.Tensor):
        return (
            f"the model must return a tensor for loss(outputs, targets); it returned a {type(outputs).__name__} "
            f"{describe(outputs)}: return the output tensor, pass loss=None if the model computes its own loss, or pass step=..."
        )
    if isinstance(targets, torch.Tensor):
        problem = fit_problem(outputs, targets, loss_name, role, getattr(loss_fn, "ignore_index", None))
        if problem is not None:
            return problem
    try:
        loss = loss_fn(outputs, targets)
    except Exception as err:
        return (
            f"the loss cannot compare model outputs {describe(outputs)} with {role} targets {describe(targets)}: "
            f"{type(err).__name__}: {first_line(err)}"
        )
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return f"the loss must return a scalar tensor; it returned {describe(loss)}: reduce it with .mean()"
    return None


def fit_problem(
    outputs: torch.Tensor, targets: torch.Tensor, loss_name: str | None, role: str, ignore_index: int | None = None
) -> str | None:
    """The output/target fit rules of a known loss: what does not fit and how to fix it, or None.

    Part of `loss_problem`, which the Trainer raises before the first step and the doctor reports.
    """
    if loss_name in CLASS_INDEX_LOSSES:
        if targets.is_floating_point() and targets.shape == outputs.shape:
            return None  # class probabilities
        if targets.is_floating_point() and targets.ndim == outputs.ndim:
            return (
                f"{loss_name} with class probabilities needs targets of the outputs' shape; the model outputs "
                f"{describe(outputs)} but {role} y is {describe(targets)}: give the model one output per class"
            )
        if targets.is_floating_point():
            return (
                f"{loss_name} needs integer class labels, but {role} y is {describe(targets)}: "
                "convert it with y.long() (or use loss='mse' for regression)"
            )
        if outputs.ndim == targets.ndim and targets.shape[-1] == 1 and outputs.ndim >= 2:
            return (
                f"{loss_name} needs labels of shape (N,) for outputs of shape (N, C), but {role} y is "
                f"{describe(targets)}: flatten the labels with y.reshape(-1)"
            )
        if outputs.ndim != targets.ndim + 1:
            return (
                f"{loss_name} needs outputs of shape (N, C) for labels of shape (N,); the model outputs "
                f"{describe(outputs)} for {role} y {describe(targets)}: end the model with nn.Linear(..., num_classes)"
            )
        return label_range_problem(outputs.shape[1], targets, role, ignore_index)
    if loss_name in SAME_SHAPE_LOSSES and outputs.shape != targets.shape:
        hint = ": give the model as many outputs as y has columns"
        if outputs.numel() == targets.numel():
            hint = f": reshape y to {tuple(outputs.shape)} (e.g. y.reshape(-1, 1)) or the output to {tuple(targets.shape)}"
        return (
            f"{loss_name} needs outputs and targets of the same shape; the model outputs {describe(outputs)} but "
            f"{role} y is {describe(targets)}{hint}"
        )
    if loss_name in BINARY_LOSSES and not targets.is_floating_point():
        return f"{loss_name} needs float targets in [0, 1], but {role} y is {describe(targets)}: use y.float()"
    return None


def label_range_problem(num_classes: int, targets: torch.Tensor, role: str, ignore_index: int | None = None) -> str | None:
    """Class labels outside [0, num_classes) and the fix, or None. Labels equal to the loss's
    `ignore_index` (-100 for torch's class-index losses) are skipped, as the loss skips them."""
    if targets.is_floating_point():
        return None
    if ignore_index is not None:
        targets = targets[targets != ignore_index]
    if targets.numel() == 0:
        return None
    low, high = int(targets.min()), int(targets.max())
    if 0 <= low and high < num_classes:
        return None
    bad = low if low < 0 else high
    return (
        f"{role} labels must lie in [0, {num_classes}) for a model with {num_classes} outputs, but y contains "
        f"{bad}: give the model {max(high + 1, num_classes)} outputs or map the labels to 0..{num_classes - 1}"
    )


def _raise(problem: str | None) -> None:
    if problem is not None:
        raise ValueError(problem)
