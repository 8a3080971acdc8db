"""What every check sees: the working copy of the model, the data as tensors, the loss (or the
user's step), settings.

The loss of a batch is always `Context.loss_of(x, y)`: the step's loss when a step is given (as the
Trainer trains), else `loss(model(x), y)`. The step sees the batch as `(x, y)`, or, for a loader
without targets, as its batches looked (`[x]` or `x`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from ..checks import eval_mode
from ..data.devices import to_device
from ..names.losses import LossFn, loss_task
from ..names.optim import OptimizerSpec
from ..step import Step, StepFn, StepResult, describe
from ..util import check_count, first_line, is_number
from .inputs import Arrays
from .preserve import ModelSnapshot
from .report import Skip

# Why the checks that compare outputs with targets do not apply to a step without them.
NO_OUTPUTS = "the step does not return outputs and targets"


class StepError(Exception):
    """The user's step raised, or returned something the Trainer would refuse: the check fails naming it."""


if TYPE_CHECKING:
    from .range_test import LRFindResult


@dataclass
class Settings:
    """How hard the doctor tries; lower step counts make it faster and rougher."""

    overfit_steps: int = 200
    overfit_samples: int = 32
    overfit_lr: float = 3e-3
    lr_find_steps: int = 100
    max_samples: int = 100_000
    seed: int | None = 0

    def __post_init__(self) -> None:
        for name in ("overfit_steps", "overfit_samples", "lr_find_steps", "max_samples"):
            check_count(name, getattr(self, name))
        if not is_number(self.overfit_lr) or not self.overfit_lr > 0:
            raise ValueError(f"overfit_lr must be a positive number; received: overfit_lr={self.overfit_lr!r}")
        self.overfit_lr = float(self.overfit_lr)


@dataclass
class Context:
    """Shared by the checks. `reset()` gives the working copy its initial state before each check."""

    model: nn.Module
    initial: ModelSnapshot
    loss_fn: LossFn | None  # None only with a step: nothing names how its outputs compare with its targets
    loss_name: str | None  # names.losses.loss_name: loss modules of a known class have their name
    optimizer: OptimizerSpec
    lr: float | None
    device: torch.device
    batch_size: int
    settings: Settings
    train: Arrays | None = None
    val: Arrays | None = None
    load_error: str | None = None
    n_outputs: int | None = None  # size of the model's output dimension 1 (1 for flat outputs)
    probe_error: str | None = None  # the model fails on the inputs
    fit_error: str | None = None  # its outputs do not fit the targets or the loss
    usable: torch.Tensor | None = None  # indices of the training rows fit for the model checks
    excluded: str = ""  # why rows were left out of `usable`
    lr_result: LRFindResult | None = None
    param_map: dict[int, nn.Parameter] = field(default_factory=dict)  # id(user's parameter) -> working copy's
    step: StepFn | None = None  # the user's step(model, batch): it computes the loss the checks train on
    step_outputs: bool = False  # the step returns "outputs" and "targets" (learnt by the probe)
    _order: torch.Tensor | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ task
    @property
    def task(self) -> str | None:
        """The loss's task (`names.losses.loss_task`), with "probabilities" for a class-index loss
        trained on float (N, C, ...) targets."""
        if self.step is not None and not self.step_outputs:
            return None  # the loss describes the step's outputs and targets: without them, nothing is known
        task = loss_task(self.loss_name)
        y = self.train.y if self.train is not None else None
        if task == "classification" and y is not None and y.is_floating_point() and y.ndim >= 2:
            return "probabilities"
        return task

    def reset(self) -> None:
        self.initial.restore(self.model)
        self.model.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ data access
    def need_data(self) -> Arrays:
        """The training split with targets; Skip when it could not be read."""
        if self.train is None or self.load_error is not None:
            raise Skip("the training data could not be read (see data.shapes)")
        if not self.train.has_targets and self.step is None:  # a step may read batches without targets
            raise Skip("the training data has no targets (see data.shapes)")
        return self.train

    def need_outputs(self) -> None:
        """Skip for a step that does not return "outputs" and "targets" (nothing to compare)."""
        if self.step is not None and self.probe_error is not None:
            raise Skip("the step fails on the data (see model.output)")
        if self.step is not None and not self.step_outputs:
            raise Skip(NO_OUTPUTS)

    def need_inputs(self) -> Arrays:
        """The training split with its inputs as one tensor; Skip otherwise."""
        if self.train is None or self.load_error is not None:
            raise Skip("the training data could not be read (see data.shapes)")
        if self.train.X is None:
            raise Skip("the inputs are not tensors, so per-sample data checks do not apply")
        return self.train

    def need_labels(self) -> Arrays:
        """The training split with tensor inputs and targets; with a step, only when it returns outputs and
        targets (the loss describes those: without them the labels' kind is unknown)."""
        train = self.need_inputs()
        if train.y is None:
            raise Skip("the training data has no targets (see data.shapes)")
        self.need_outputs()
        return train

    def need_model_batch(self) -> None:
        """Skip unless the model runs on the data, its outputs fit the loss, and some rows are usable."""
        self.need_data()
        if self.probe_error is not None:
            raise Skip(f"the {'step fails on' if self.step is not None else 'model cannot process'} the data (see model.output)")
        if self.usable is not None and self.usable.numel() == 0:
            raise Skip(f"no training row is usable: {self.excluded}")
        if self.fit_error is not None:
            raise Skip("the outputs do not fit the targets or the loss (see model.output)")

    def usable_targets(self) -> torch.Tensor | None:
        """Targets of all usable training rows (None for raw, non-tensor batches)."""
        if self.train is None or self.train.X is None or self.train.y is None:
            return None
        return self.train.y[self._usable()]

    def batch(self, n: int) -> tuple[Any, torch.Tensor | None]:
        """`n` usable training samples on the device, the same ones for every check (a seeded shuffle,
        so sorted data does not give a one-class batch). Raw loader batches: the first one."""
        train = self.need_data()
        if train.X is None:
            return to_device(train.raw_batches[0], self.device)
        rows = self._rows()[:n]
        return train.X[rows].to(self.device), _rows_of(train.y, rows, self.device)

    def stream(self, n: int) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """Endless batches of `n` usable samples, reshuffled (locally seeded) every pass."""
        train = self.need_data()
        if train.X is None:
            while True:
                for batch in train.raw_batches:
                    yield to_device(batch, self.device)
        generator = torch.Generator().manual_seed(self.settings.seed or 0)
        usable = self._usable()
        n = min(n, usable.numel())
        while True:
            order = usable[torch.randperm(usable.numel(), generator=generator)]
            for lo in range(0, order.numel() - n + 1, n):
                rows = order[lo : lo + n]
                yield train.X[rows].to(self.device), _rows_of(train.y, rows, self.device)

    def _usable(self) -> torch.Tensor:
        assert self.train is not None and self.train.X is not None
        return self.usable if self.usable is not None else torch.arange(self.train.X.shape[0])

    def _rows(self) -> torch.Tensor:
        if self._order is None:
            usable = self._usable()
            generator = torch.Generator().manual_seed(self.settings.seed or 0)
            self._order = usable[torch.randperm(usable.numel(), generator=generator)]
        return self._order

    def _mode(self, train: bool) -> contextlib.AbstractContextManager[Any]:
        """Train mode (left on afterwards), or eval mode until the block ends."""
        if train:
            self.model.train()
            return contextlib.nullcontext()
        return eval_mode(self.model)

    # ------------------------------------------------------------------ the loss of a batch
    def loss_of(self, x: Any, y: Any) -> torch.Tensor:
        """The batch's loss as training computes it: the step's, else `loss(model(x), y)`. In the
        model's current mode, with gradients unless the caller turned them off; StepError for a
        failing step."""
        if self.step is not None:
            return self.run_step(x, y).loss
        assert self.loss_fn is not None
        return self.loss_fn(self.model(x), y)

    def outputs_of(self, x: Any, y: Any, train: bool = False) -> tuple[Any, Any]:
        """`(outputs, targets)` of a batch without gradients, in eval mode unless `train`: the step's
        "outputs" and "targets" (Skip when it returns none), else `(model(x), y)`."""
        if self.step is None:
            with torch.no_grad(), self._mode(train):
                return self.model(x), y
        self.need_outputs()
        with torch.no_grad(), self._mode(train):
            result = self.run_step(x, y)
        if result.outputs is None or result.targets is None:
            raise Skip(NO_OUTPUTS)
        return result.outputs, result.targets

    def run_step(self, x: Any, y: Any) -> StepResult:
        """The user's step on the batch `(x, y)` (`[x]` or `x` alone for a loader of such batches without
        targets), its value checked as the Trainer checks it; any failure is a StepError naming the step."""
        assert self.step is not None
        form = self.train.form if self.train is not None else "pair"
        batch = (x, y) if y is not None else [x] if form == "single" else x
        try:
            return Step(None, None, self.step)(self.model, batch)
        except Exception as err:
            if "step(model, batch)" in str(err):  # the core's message about the value returned: it says how
                raise StepError(first_line(err)) from err
            raise StepError(f"step(model, batch) raised {type(err).__name__} on a batch {describe(batch)}: {first_line(err)}") from err


def _rows_of(y: torch.Tensor | None, rows: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    return y[rows].to(device) if y is not None else None
