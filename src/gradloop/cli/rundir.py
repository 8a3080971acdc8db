"""Run directories: naming, creating (and removing again after an early failure), run.json status.

`run.json` says what became of a run: "running" while `fit` trains, then "finished",
"stopped early", "interrupted" or "failed" (with the stop reason or the error).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..callbacks.base import Callback
from ..data import distributed
from ..util import atomic_write, host_name, pid_alive
from .errors import UsageError

if TYPE_CHECKING:
    from ..trainer import Trainer

RUN_FILE = "run.json"
CONFIG_FILE = "config.toml"
DATA_FILE = "data.json"


def default_run_dir(stem: str, root: Path = Path("runs")) -> Path:
    """`runs/<stem>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`... if that name is taken."""
    base = root / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def check_new_run_dir(path: Path) -> None:
    """A run directory for `fit` must be new or empty: an earlier run is never overwritten."""
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--run-dir {str(path)!r} is a file: choose a directory")
        if any(path.iterdir()):
            hint = f"resume it with `gradloop resume {path}` or " if (path / CONFIG_FILE).exists() else ""
            raise UsageError(f"run directory {str(path)!r} is not empty: {hint}choose a new --run-dir")


class RunDir:
    """A run directory this process creates; `discard()` removes it again (and parents it created)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created: list[Path] = []  # directories made here, innermost first

    def create(self) -> None:
        """Makes the directory; under torchrun rank 0 alone creates and discards (every rank writes into it)."""
        if not distributed.is_rank_zero():
            return
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"run directory {str(self.path)!r} cannot be created: {err.strerror}") from None
        self.created = missing

    def has_checkpoint(self) -> bool:
        return any((self.path / "checkpoints").glob("*.ckpt"))

    def discard(self) -> None:
        """Removes what this process created: the whole run dir if it made it, else its files."""
        if not distributed.is_rank_zero():
            return
        if self.path in self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            for parent in self.created[1:]:
                try:
                    parent.rmdir()  # only while empty
                except OSError:
                    break
        elif self.path.is_dir():
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


# -------------------------------------------------------------------------------- run.json
def read_run(run_dir: Path) -> dict[str, Any]:
    """run.json as a dict ({} when absent or unreadable)."""
    try:
        return json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_run(run_dir: Path, **fields: Any) -> None:
    """Updates run.json (atomically: a reader never sees half a file); under torchrun, rank 0 alone."""
    if not distributed.is_rank_zero():
        return
    record = read_run(run_dir)
    record.update(fields)
    atomic_write(run_dir / RUN_FILE, json.dumps(record, indent=1) + "\n", durable=False)


def status_for(stop_reason: str | None) -> str:
    if stop_reason in (None, "max_epochs", "max_steps"):
        return "finished"
    if "non-finite" in stop_reason or "nan" in stop_reason.lower():
        return "failed"
    return "stopped early"


def effective_status(record: dict[str, Any]) -> str:
    """The recorded status; a "running" run whose process is gone on this machine was interrupted."""
    status = record.get("status", "unknown")
    if status == "running" and record.get("host") == host_name() and not pid_alive(record.get("pid")):
        return "interrupted"
    return status


class RunRecorder(Callback):
    """Writes run.json: "running" when training starts (after every check), the outcome at the end."""

    priority = 100  # after every other callback, so that their start-up checks have passed

    def __init__(self, run_dir: Path, command: str, config_dir: str | None = None) -> None:
        self.run_dir = run_dir
        self.command = command
        self.config_dir = config_dir  # where a "package.module:factory" model is imported from
        self.started = False

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.started = True
        write_run(
            self.run_dir,
            status="running",
            command=self.command,
            pid=os.getpid(),
            host=host_name(),
            started=_now(),
            ended=None,
            stop_reason=None,
            error=None,
            config_dir=self.config_dir,
        )

    def finish(self, status: str, stop_reason: str | None = None, error: str | None = None) -> None:
        if self.started:
            write_run(self.run_dir, status=status, stop_reason=stop_reason, error=error, ended=_now())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
