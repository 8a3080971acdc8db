"""Finding the checkpoint to resume from: the newest one in a directory that verifies."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from . import checkpoint
from .checkpoint import SUFFIX, CheckpointError


def candidates(directory: str | os.PathLike[str]) -> list[Path]:
    """Checkpoints (`*.ckpt` files, and sharded `*.ckpt/` directories) in `directory`, newest first; `last.ckpt` first among equals."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob("*" + SUFFIX):
        try:
            found.append((path.stat().st_mtime_ns, path.name == "last" + SUFFIX, path.name, path))
        except OSError:
            continue
    return [entry[-1] for entry in sorted(found, reverse=True)]


def latest(directory: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint (by modification time) in `directory` that verifies; None when there is none.

    A broken newer file is skipped with a note on stderr; when every file fails verification,
    a CheckpointError names them all.
    """
    from . import sharded

    found = _first_usable(Path(directory), lambda path: sharded.verify(path) if path.is_dir() else checkpoint.verify(path))
    return found[0] if found else None


def load_latest(
    directory: str | os.PathLike[str], load: Callable[[Path], dict[str, Any]] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """Like `latest`, but loads the file too (verifying it once): `(path, state)`, or None.

    `load(path)`: how to read one instead of `checkpoint.load` (the trainer's, which also reads
    sharded checkpoint directories into its model)."""
    return _first_usable(Path(directory), load or checkpoint.load)


def _first_usable(directory: Path, use: Callable[[Path], Any]) -> tuple[Path, Any] | None:
    failures: list[str] = []
    for path in candidates(directory):
        try:
            result = use(path)
        except CheckpointError as err:
            failures.append(str(err))
            continue
        for failure in failures:
            print(f"gradloop: skipping a broken checkpoint: {failure}; using {str(path)!r}", file=sys.stderr)
        return path, result
    if failures:
        raise CheckpointError(f"no checkpoint in {str(directory)!r} can be used: " + "; ".join(failures))
    return None
