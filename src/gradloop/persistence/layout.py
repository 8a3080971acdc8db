"""What a checkpoint holds and how a trainer is put back into that state.

Layout of `Trainer.state_dict()` (format version in checkpoint.py):
  model, optimizer, scaler      state_dicts
  progress                      TrainState: epoch, global_step, step_in_epoch, batch_in_epoch
  order                         the current epoch's data order (None between epochs)
  meter                         the current epoch's running metric sums
  epoch_lr                      the LR logged for the current epoch so far
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
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import CheckpointError
from .restore import load_model_state, load_optimizer_state
from ..util import rng_state, set_rng_state

if TYPE_CHECKING:
    from ..trainer import Trainer

# A mismatch in these makes the saved position inside an epoch meaningless.
_POSITION_SETTINGS = ("batch_size", "num_batches", "num_samples", "shuffle", "accumulate_grad_batches")


def trainer_state(trainer: "Trainer") -> dict[str, Any]:
    from .. import __version__

    progress = trainer.state.state_dict()
    order = trainer._order
    if trainer._epoch_done:  # saved from on_epoch_end: the epoch is complete, resume at the next one
        progress = {**progress, "epoch": progress["epoch"] + 1, "step_in_epoch": 0, "batch_in_epoch": 0}
        order = None
    return {
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.precision.scaler.state_dict() if trainer.precision.scaler is not None else None,
        "progress": progress,
        "order": order,
        "meter": trainer._meter.state_dict() if order is not None else None,
        "epoch_lr": float(getattr(trainer, "_epoch_lr", trainer.optimizer.param_groups[0]["lr"])),
        "history": trainer.history.state_dict(),
        "callbacks": trainer.callbacks.state_dict(),
        "rng": rng_state(),
        "settings": dict(trainer._settings),
        "versions": {"gradloop": __version__, "torch": str(torch.__version__)},
    }


def check_settings(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A mismatch that breaks the resumed position is an error; any other is a warning."""
    settings = saved.get("settings") or {}
    mid_epoch = saved.get("order") is not None
    for key, value in current.items():
        if key not in settings or settings[key] == value:
            continue
        message = f"checkpoint {str(path)!r} was written with {key}={settings[key]!r}, this run has {key}={value!r}"
        if key == "optimizer":
            raise CheckpointError(f"{message}: build the Trainer with the same optimizer to resume")
        if mid_epoch and key in _POSITION_SETTINGS:
            raise ValueError(f"{message}: the saved position inside the epoch does not apply; resume with the same data and {key}")
        warnings.warn(message, stacklevel=3)


def restore_model_and_progress(trainer: "Trainer", saved: dict[str, Any], source: str | os.PathLike[str] = "the checkpoint") -> None:
    """Weights, optimizer, scaler, counters and history: what callbacks may read in on_fit_start.

    A checkpoint of another model or optimizer is one CheckpointError naming `source`.
    """
    load_model_state(trainer.model, saved["model"], source)
    load_optimizer_state(trainer.optimizer, saved["optimizer"], source)
    if trainer.precision.scaler is not None and saved.get("scaler") is not None:
        trainer.precision.scaler.load_state_dict(saved["scaler"])
    trainer.state.load_state_dict(saved["progress"])
    trainer.history.load_state_dict(saved["history"])
    trainer._order = saved["order"]
    trainer._epoch_lr = saved.get("epoch_lr", trainer.optimizer.param_groups[0]["lr"])
    if saved["order"] is not None and saved.get("meter") is not None:
        trainer._meter.load_state_dict(saved["meter"])


def restore_after_setup(trainer: "Trainer", saved: dict[str, Any]) -> None:
    """Callback states, optimizer hyperparameters and RNG: after on_fit_start has built schedulers."""
    trainer.callbacks.load_state_dict(saved["callbacks"])
    # Building a torch LR scheduler in on_fit_start rewrites the optimizer's LR: put the saved one back.
    for group, saved_group in zip(trainer.optimizer.param_groups, saved["optimizer"]["param_groups"]):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
    set_rng_state(saved["rng"])


def weights_are_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def default_resume_hint(run_dir: Path) -> str:
    script = " ".join(sys.argv) if sys.argv and sys.argv[0] else "your script"
    return f"run `{script}` again with fit(..., resume='last') and run_dir={str(run_dir)!r}"
