"""What a checkpoint holds and how a trainer is put back into that state.

Layout of `Trainer.state_dict()`, assembled from public state dicts only (the file format is
checkpoint.py's):
  model, optimizer, scaler      state_dicts
  progress                      TrainState: epoch, global_step, step_in_epoch, batch_in_epoch
  resume_point                  ResumePoint: the epoch's data order, running metric sums and LR
  history, callbacks            History and every callback's state_dict()
  rng                           python, numpy, torch (and CUDA) generator states
  settings                      what must match on resume (batch size, data size, ...)
  versions                      gradloop and torch versions that wrote it
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..util import rng_state, set_rng_state
from .checkpoint import CheckpointError
from .restore import load_model_state, load_optimizer_state

if TYPE_CHECKING:
    from ..trainer import Trainer

REQUIRED = ("model", "optimizer", "scaler", "progress", "resume_point", "history", "callbacks", "rng", "settings")
# A mismatch in these makes the saved position inside an epoch meaningless.
_POSITION_SETTINGS = ("batch_size", "num_batches", "num_samples", "shuffle", "accumulate_grad_batches")


def trainer_state(trainer: "Trainer") -> dict[str, Any]:
    from .. import __version__

    progress = trainer.state.state_dict()
    if trainer.resume_point.epoch_done:  # saved from on_epoch_end: the epoch is complete, resume at the next one
        progress = {**progress, "epoch": progress["epoch"] + 1, "step_in_epoch": 0, "batch_in_epoch": 0}
    scaler = trainer.precision.scaler
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "progress": progress,
        "resume_point": trainer.resume_point.state_dict(),
        "history": trainer.history.state_dict(),
        "callbacks": trainer.callbacks.state_dict(),
        "rng": rng_state(),
        "settings": dict(trainer.fit_settings),
        "versions": {"gradloop": __version__, "torch": str(torch.__version__)},
    }


def check_parts(saved: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """Every part of the layout is there: checked once, before anything is read or restored."""
    missing = [key for key in REQUIRED if key not in saved]
    if missing:
        raise CheckpointError(f"{str(source)!r} is not a gradloop training state (it lacks {', '.join(missing)})")


def check_settings(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A mismatch that breaks the resumed position is an error; any other is a warning."""
    check_parts(saved, path)
    settings = saved.get("settings") or {}
    mid_epoch = saved["resume_point"]["order"] is not None
    for key, value in current.items():
        if key not in settings or settings[key] == value:
            continue
        message = f"checkpoint {str(path)!r} was written with {key}={settings[key]!r}, this run has {key}={value!r}"
        if key == "optimizer":
            raise CheckpointError(f"{message}: build the Trainer with the same optimizer to resume")
        if mid_epoch and key in _POSITION_SETTINGS:
            raise ValueError(f"{message}: the saved position inside the epoch does not apply; resume with the same data and {key}")
        warnings.warn(message, stacklevel=3)


def restore(trainer: "Trainer", saved: dict[str, Any], source: str | os.PathLike[str], setup: Callable[[], None] | None = None) -> None:
    """Puts `trainer` into the `saved` state: the one restore path.

    First weights, optimizer, scaler, counters, resume point and history (what callbacks may read
    in `on_fit_start`), then `setup()` (the fit's `on_fit_start`, which builds schedulers), then
    the callbacks' states, the optimizer's saved hyperparameters (a scheduler built in
    `on_fit_start` rewrites the LR) and the RNG states. A checkpoint of another model or
    optimizer, or one that lacks a part, is one CheckpointError naming `source`.
    """
    check_parts(saved, source)
    if saved.get("sharded"):  # a sharded checkpoint's DCP state dicts (sharded.load)
        from .sharded import restore_tensors

        restore_tensors(trainer, saved)
    else:
        load_model_state(trainer.model, saved["model"], source)
        load_optimizer_state(trainer.optimizer, saved["optimizer"], source)
    if trainer.precision.scaler is not None and saved["scaler"] is not None:
        trainer.precision.scaler.load_state_dict(saved["scaler"])
    trainer.state.load_state_dict(saved["progress"])
    trainer.resume_point.load_state_dict(saved["resume_point"])
    trainer.history.load_state_dict(saved["history"])
    if setup is not None:
        setup()
    trainer.callbacks.load_state_dict(saved["callbacks"])
    for group, saved_group in zip(trainer.optimizer.param_groups, saved["optimizer"]["param_groups"]):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    set_rng_state(saved["rng"])


def default_resume_hint(run_dir: Path) -> str:
    script = " ".join(sys.argv) if sys.argv and sys.argv[0] else "your script"
    return f"run `{script}` again with fit(..., resume='last') and run_dir={str(run_dir)!r}"
