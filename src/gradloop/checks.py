"""Checks run before the first step: does the model's output fit the targets and the loss?"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .data.batches import Batches, LoaderBatches, TensorBatches
from .names.losses import BINARY_LOSSES, CLASS_INDEX_LOSSES, SAME_SHAPE_LOSSES, LossFn
from .names.metrics import Metric
from .util import first_line, preserved_rng


def _shape(t: Any) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" if isinstance(t, torch.Tensor) else type(t).__name__


class eval_mode:
    """Puts every module in eval mode and restores each module's own mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        for module, training in self.modes:
            module.training = training


def check_model_fits_data(
    model: nn.Module, batches: Batches, loss_fn: LossFn, loss_name: str | None, metrics: Sequence[Metric], role: str = "train"
) -> None:
    """Runs the model in eval mode on two samples and checks outputs against targets and loss.

    Draws no random numbers and changes no state. Raises ValueError naming the problem and the fix.
    """
    with preserved_rng():  # a random-augmenting Dataset or a model that samples must not shift the user's RNG
        _check_model_fits_data(model, batches, loss_fn, loss_name, metrics, role)


def _check_model_fits_data(
    model: nn.Module, batches: Batches, loss_fn: LossFn, loss_name: str | None, metrics: Sequence[Metric], role: str
) -> None:
    sample = batches.peek(2)
    if sample is None:
        return
    inputs, targets = sample
    with torch.inference_mode(), eval_mode(model):
        try:
            outputs = model(inputs)
        except Exception as err:  # any failure here is the user's model meeting the user's data
            fix = "Make the model's first layer accept this input shape"
            if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
                fix = f"The inputs are {str(inputs.dtype).replace('torch.', '')}: convert them with X.float()"
            raise ValueError(
                f"the model cannot process the {role} inputs (a batch of shape {_shape(inputs)}): "
                f"{type(err).__name__}: {first_line(err)}. {fix}"
            ) from err
        if not isinstance(outputs, torch.Tensor):
            raise TypeError(f"the model must return a tensor; it returned {type(outputs).__name__}")
        ignore_index = getattr(loss_fn, "ignore_index", None)
        _raise(fit_problem(outputs, targets, loss_name, role, ignore_index))
        if isinstance(batches, TensorBatches) and batches.targets is not None and loss_name in CLASS_INDEX_LOSSES:
            _raise(label_range_problem(outputs.shape[1], batches.targets, role, ignore_index))
        if isinstance(batches, LoaderBatches) and loss_name in CLASS_INDEX_LOSSES:
            dataset = batches.loader.dataset
            if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:  # labels in memory: check them all
                _raise(label_range_problem(outputs.shape[1], dataset.tensors[1], role, ignore_index))
        try:
            loss = loss_fn(outputs, targets)
        except Exception as err:
            raise ValueError(
                f"the loss cannot compare model outputs {_shape(outputs)} with {role} targets {_shape(targets)}: "
                f"{type(err).__name__}: {first_line(err)}"
            ) from err
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"the loss must return a scalar tensor; it returned {_shape(loss)}: reduce it with .mean()")
        for metric in metrics:
            try:
                metric.batch_sums(outputs, targets, outputs.shape[0])
            except Exception as err:
                raise ValueError(
                    f"metric {metric.name!r} cannot compare model outputs {_shape(outputs)} with targets "
                    f"{_shape(targets)}: {type(err).__name__}: {first_line(err)}"
                ) from err


def fit_problem(
    outputs: torch.Tensor, targets: torch.Tensor, loss_name: str | None, role: str, ignore_index: int | None = None
) -> str | None:
    """The output/target fit rules of a known loss: what does not fit and how to fix it, or None.

    The Trainer raises it as a ValueError before the first step; the doctor reports it.
    """
    if loss_name in CLASS_INDEX_LOSSES:
        if targets.is_floating_point() and targets.shape == outputs.shape:
            return None  # class probabilities
        if targets.is_floating_point() and targets.ndim == outputs.ndim:
            return (
                f"{loss_name} with class probabilities needs targets of the outputs' shape; the model outputs "
                f"{_shape(outputs)} but {role} y is {_shape(targets)}: give the model one output per class"
            )
        if targets.is_floating_point():
            return (
                f"{loss_name} needs integer class labels, but {role} y is {_shape(targets)}: "
                "convert it with y.long() (or use loss='mse' for regression)"
            )
        if outputs.ndim == targets.ndim and targets.shape[-1] == 1 and outputs.ndim >= 2:
            return (
                f"{loss_name} needs labels of shape (N,) for outputs of shape (N, C), but {role} y is "
                f"{_shape(targets)}: flatten the labels with y.reshape(-1)"
            )
        if outputs.ndim != targets.ndim + 1:
            return (
                f"{loss_name} needs outputs of shape (N, C) for labels of shape (N,); the model outputs "
                f"{_shape(outputs)} for {role} y {_shape(targets)}: end the model with nn.Linear(..., num_classes)"
            )
        return label_range_problem(outputs.shape[1], targets, role, ignore_index)
    if loss_name in SAME_SHAPE_LOSSES and outputs.shape != targets.shape:
        hint = ": give the model as many outputs as y has columns"
        if outputs.numel() == targets.numel():
            hint = f": reshape y to {tuple(outputs.shape)} (e.g. y.reshape(-1, 1)) or the output to {tuple(targets.shape)}"
        return (
            f"{loss_name} needs outputs and targets of the same shape; the model outputs {_shape(outputs)} but "
            f"{role} y is {_shape(targets)}{hint}"
        )
    if loss_name in BINARY_LOSSES and not targets.is_floating_point():
        return f"{loss_name} needs float targets in [0, 1], but {role} y is {_shape(targets)}: use y.float()"
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
