"""`gradloop verify RUN_DIR | FILE...`: checks every checkpoint's checksum and structure, one line per file.

Exit codes: 0 every file verifies, 1 one or more do not, 2 a path that does not exist or is not a run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from ...persistence.checkpoint import SUFFIX, CheckpointError
from ...persistence.verification import CheckpointInfo, checkpoint_files, run_files, verify_file
from ..errors import UsageError
from ..rundir import CONFIG_FILE


def verify(paths: Sequence[str]) -> int:
    files = [file for given in paths for file in _files(given)]
    failed = 0
    resumable: set[Path] = set()  # directories whose resume checkpoint was found
    for path, in_directory in files:
        try:
            info = verify_file(path)
        except (CheckpointError, OSError) as err:
            failed += 1
            print(f"FAIL  {err}" if isinstance(err, CheckpointError) else f"FAIL  {path}: {err.strerror or err}", flush=True)
            continue
        note = ""
        if in_directory and isinstance(info, CheckpointInfo) and path.suffix == SUFFIX and path.parent not in resumable:
            resumable.add(path.parent)  # files come newest first: the first that verifies is the one a resume takes
            note = "  (a resume starts here)"
        print(f"ok    {path}  {info.describe()}{note}", flush=True)
    if failed:
        print(f"gradloop verify: {failed} of {len(files)} files failed", file=sys.stderr)
        return 1
    print(f"gradloop verify: {len(files)} file{'s' if len(files) != 1 else ''} verified", file=sys.stderr)
    return 0


def _files(given: str) -> list[tuple[Path, bool]]:
    """(file, found in a directory): a file as given; a run directory's checkpoints and weights; a
    folder's checkpoint files."""
    path = Path(given)
    if not path.exists():
        raise UsageError(f"{given!r} does not exist: give a run directory or checkpoint files")
    if not path.is_dir() or path.suffix == SUFFIX:  # a file, or a sharded checkpoint directory (strategy="fsdp")
        return [(path, False)]
    if (path / "checkpoints").is_dir() or (path / CONFIG_FILE).is_file() or (path / "metrics.csv").is_file():
        files = run_files(path)
        if not files:
            raise UsageError(f"run directory {given!r} has no checkpoints and no model.safetensors: nothing to verify")
        return [(file, True) for file in files]
    if any(path.glob("*" + SUFFIX)):
        return [(file, True) for file in checkpoint_files(path)]
    raise UsageError(f"{given!r} is not a run directory (no checkpoints/ in it) and holds no {SUFFIX} files")
