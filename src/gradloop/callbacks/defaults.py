"""The callbacks every run gets unless told otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import Callback
from .logging import CSVLogger, JSONLLogger
from .plots import PlotCurves
from .progress import ProgressBar


def with_defaults(callbacks: Sequence[Callback], run_dir: Path | None, enabled: bool = True) -> list[Callback]:
    """A progress display always; with a run_dir also CSV/JSONL logging, curves and checkpoints.

    A callback of the same class as a default one (or a subclass of it) replaces it.
    """
    callbacks = list(callbacks)
    if not enabled:
        return callbacks
    defaults: list[Callback] = [ProgressBar()]
    if run_dir is not None:
        from .checkpoint import ModelCheckpoint

        defaults += [CSVLogger(), JSONLLogger(), PlotCurves(), ModelCheckpoint()]
    return callbacks + [d for d in defaults if not any(isinstance(c, type(d)) for c in callbacks)]
