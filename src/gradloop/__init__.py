"""gradloop: the PyTorch training loop, done once and done properly."""

from __future__ import annotations

import importlib
from typing import Any

from . import callbacks
from .callbacks import *  # noqa: F403  # every callback, as listed in callbacks.__all__
from .doctor import doctor, lr_find  # the doctor's checks themselves load on the first call
from .history import History
from .names.metrics import named
from .persistence.checkpoint import CheckpointError
from .persistence.runlock import RunDirLocked
from .persistence.verification import CheckpointInfo, verify_checkpoint
from .persistence.weights import load_weights
from .state import TrainState
from .trainer import Trainer
from .util import seed_everything

_DOCTOR_TYPES = ("DoctorReport", "LRFindResult")
_RESUME_CHECK = ("check_resume", "ResumeCheckResult")  # loaded on first use, as the doctor's checks

__all__ = [
    "Trainer",
    "History",
    "named",
    "TrainState",
    "seed_everything",
    "load_weights",
    "CheckpointError",
    "verify_checkpoint",
    "CheckpointInfo",
    "RunDirLocked",
    *callbacks.__all__,
    "doctor",
    "lr_find",
    *_DOCTOR_TYPES,
    *_RESUME_CHECK,
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _DOCTOR_TYPES or name in _RESUME_CHECK:
        value = getattr(importlib.import_module(".doctor" if name in _DOCTOR_TYPES else ".resume_check", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradloop' has no attribute {name!r}")
