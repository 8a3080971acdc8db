"""The resume check: does an interrupted and resumed run end bit-identical to one never interrupted?

    result = gl.check_resume(lambda: gl.Trainer(make_model(), seed=0, ...), (X, y), steps=20)
    print(result)          # OK bit-identical, or the first tensor that differs, by how much, and the likely cause
    result.ok, result.message, result.differences

Three fresh trainers from `trainer_factory()`, each with a run directory in a temporary folder
(their `run_dir` is set there, whatever the factory gave):
  1. the uninterrupted run: `steps` optimizer steps;
  2. the interrupted run: after the optimizer step nearest half of `steps` that does not end an
     epoch (where there is one), `trainer.save_checkpoint` writes RUN_DIR/checkpoints/last.ckpt
     and the run ends at once, as a process killed right after its checkpoint would;
  3. the resumed run: `fit(..., resume="last")` in that run directory, up to `steps`.
Every run starts from the same global RNG state (so a factory without `seed=` is checked too) and
the caller's RNG states are put back at the end. The runs are compared batch by batch (the
model's inputs and outputs in training mode, each batch's loss) and at the end by the whole
training state that a checkpoint holds (weights by parameter name, optimizer state by the
parameter it belongs to, RNG states, counters, callbacks' states, history). The first batch where
the runs part says where to look: different inputs point to the data pipeline, different outputs
for the same inputs to state outside the model, the optimizer and the RNG.

Costs: two trainings of `steps` steps, with one host copy of every training forward's inputs and
outputs (the check's own sync; training itself does not pay it).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..callbacks.base import CallbackList
from ..trainer import Trainer
from ..util import check_count, preserved_rng, rng_state, set_rng_state
from .compare import first_divergence, leaf_differences, state_differences
from .recording import Interrupted, Recorder
from .report import Difference, ResumeCheckResult, summarize

__all__ = ["check_resume", "ResumeCheckResult", "Difference"]


def check_resume(
    trainer_factory: Callable[[], Trainer],
    train: Any,
    val: Any = None,
    steps: int | None = None,
    batch_size: int = 64,
    shuffle: bool = True,
    *,
    interrupt_at: int | None = None,
) -> ResumeCheckResult:
    """Trains `steps` optimizer steps straight, and again interrupted mid-epoch, checkpointed and resumed
    in a fresh Trainer; reports "bit-identical" or the first tensor that differs.

    `trainer_factory()` returns a fresh `gl.Trainer` around a freshly built model on each call (with
    the same seed). `train`, `val`, `batch_size`, `shuffle`: as `Trainer.fit` takes them. `steps`:
    the optimizer steps of each run (the trainers' `max_steps`, with `max_epochs` high enough to
    reach it); None: the trainer's own `max_epochs` and `max_steps`. `interrupt_at`: the optimizer
    step after which the second run is interrupted (default: the step nearest `steps / 2` that does
    not end an epoch). Bad arguments raise ValueError/TypeError; what the runs do is reported.
    """
    if not callable(trainer_factory):
        raise TypeError(f"trainer_factory must be a function that returns a fresh gl.Trainer; received {trainer_factory!r}")
    check_count("steps", steps, optional=True)
    check_count("interrupt_at", interrupt_at, optional=True)
    if steps is not None and steps < 2:
        raise ValueError(f"steps must be at least 2, so that a run can be interrupted between them; received: steps={steps}")
    if steps is not None and interrupt_at is not None and interrupt_at >= steps:
        raise ValueError(f"interrupt_at must be below steps; received: interrupt_at={interrupt_at}, steps={steps}")
    fit_args = {"val": val, "batch_size": batch_size, "shuffle": shuffle}
    with preserved_rng(), tempfile.TemporaryDirectory(prefix="gradloop-check-resume-") as folder:
        runs = _Runs(trainer_factory, steps, Path(folder), rng_state())
        straight, straight_record = runs.make("the uninterrupted run", "uninterrupted")
        initial = {k: v.detach().clone() for k, v in straight.model.state_dict().items()}
        runs.fit(straight, straight_record, train, fit_args)
        total = straight.state.global_step
        if total < 2:
            raise ValueError(f"the run took {total} optimizer step(s): a resume check needs at least 2 (pass steps=...)")
        stop = interrupt_at if interrupt_at is not None else _interruption_step(total, straight_record.epoch_end_steps)
        if stop >= total:
            raise ValueError(f"interrupt_at={stop} is not below the run's {total} optimizer steps")

        path = Path(folder) / "interrupted" / "checkpoints" / "last.ckpt"
        first, first_record = runs.make("before the interruption", "interrupted", stop_at=stop, checkpoint=path)
        setup = _setup_differences(straight, first, initial)
        if setup:
            return summarize(setup, total, stop, None)
        runs.fit(first, first_record, train, fit_args)
        if first_record.stopped_where is None:  # it ended before its interruption point
            return summarize(_early_end(straight_record, first_record, first, stop), total, stop, None)
        resumed, resumed_record = runs.make("after the resume", "interrupted")
        runs.fit(resumed, resumed_record, train, {**fit_args, "resume": "last"})  # finds that file, as a requeued job would

        differences = first_divergence(straight_record.records, first_record.records + resumed_record.records)
        differences += state_differences(straight.state_dict(), resumed.state_dict(), _optimizer_param_names(straight))
        return summarize(differences, total, stop, first_record.stopped_where)


class _Runs:
    """Makes and runs the check's trainers: each from a fresh factory call, from the same RNG state."""

    def __init__(self, factory: Callable[[], Trainer], steps: int | None, folder: Path, start: dict[str, Any]) -> None:
        self.factory, self.steps, self.folder, self.start = factory, steps, folder, start
        self.models: list[torch.nn.Module] = []

    def make(self, phase: str, run_dir: str, stop_at: int | None = None, checkpoint: Path | None = None) -> tuple[Trainer, Recorder]:
        set_rng_state(self.start)
        trainer = self.factory()
        if not isinstance(trainer, Trainer):
            raise TypeError(f"trainer_factory must return a gl.Trainer; it returned {type(trainer).__name__}")
        if any(trainer.model is model for model in self.models):
            raise ValueError("trainer_factory returned a Trainer around a model it returned before: build the model inside the factory")
        self.models.append(trainer.model)
        trainer.run_dir = self.folder / run_dir
        if self.steps is not None:
            trainer.max_steps, trainer.max_epochs = self.steps, self.steps  # every epoch takes at least one step
        recorder = Recorder(trainer, phase, stop_at, checkpoint)
        trainer.callbacks = CallbackList([*trainer.callbacks, recorder], rank_zero=trainer.callbacks.rank_zero)
        return trainer, recorder

    def fit(self, trainer: Trainer, recorder: Recorder, train: Any, fit_args: dict[str, Any]) -> None:
        """Runs `trainer.fit` up to its end or its recorder's interruption point."""
        set_rng_state(self.start)
        with contextlib.suppress(Interrupted), recorder.hooked():
            trainer.fit(train, **fit_args)


def _interruption_step(total: int, epoch_ends: list[int]) -> int:
    """The step nearest half of `total` that does not end an epoch (or, if every step does, half)."""
    inside = [s for s in range(1, total) if s not in set(epoch_ends)]
    return min(inside, key=lambda s: (abs(2 * s - total), s)) if inside else total // 2


def _setup_differences(straight: Trainer, first: Trainer, initial: dict[str, torch.Tensor]) -> list[Difference]:
    """The factory's second trainer must start where the first did: the same weights, the same optimizer."""
    if type(first.optimizer) is not type(straight.optimizer):
        kinds = f"{type(straight.optimizer).__name__} vs {type(first.optimizer).__name__}"
        return [Difference("setup", "the optimizer", "the start", detail=kinds)]
    return leaf_differences("initial weights", initial, first.model.state_dict(), "", "the start")


def _early_end(straight: Recorder, first: Recorder, trainer: Trainer, stop: int) -> list[Difference]:
    found = first_divergence(straight.records[: len(first.records)], first.records)
    reason = trainer.stop_reason or "it ended"
    detail = f"{reason} before step {stop}, where it was to be interrupted"
    end = Difference("run", "the second run", f"step {trainer.state.global_step}", detail=detail)
    return found + [end]


def _optimizer_param_names(trainer: Trainer) -> list[str]:
    """Parameter names in the order the optimizer's state_dict numbers them (param group by param group)."""
    by_id = {id(p): name for name, p in trainer.model.named_parameters()}
    return [by_id.get(id(p), f"parameter {i}") for i, p in enumerate(p for g in trainer.optimizer.param_groups for p in g["params"])]
