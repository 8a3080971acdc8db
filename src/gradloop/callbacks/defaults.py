"""The callbacks every run gets unless told otherwise."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base import Callback
from .logging import CSVLogger
from .progress import ProgressBar


def with_defaults(callbacks: Sequence[Callback], run_dir: Path | None, enabled: bool = True) -> list[Callback]:
    """A progress display always; with a run_dir also CSV logging, curves and checkpoints.

    A callback of the same class as a default one replaces it.
    """
    callbacks = list(callbacks)
    if not enabled:
        return callbacks
    defaults: list[Callback] = [ProgressBar()]
    if run_dir is not None:
        defaults += [CSVLogger()]
    given = {type(c) for c in callbacks}
    return callbacks + [d for d in defaults if type(d) not in given]
