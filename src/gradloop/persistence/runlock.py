"""One process per run directory: `RUN_DIR/.lock` names the process that trains in it.

    with RunLock(run_dir):
        ...  # a second fit/resume on run_dir fails at once, naming this process

The lock file is created exclusively (O_CREAT | O_EXCL), so of two processes starting together
exactly one gets it. It holds the owner's pid, host, boot id and process start time; a lock whose
owner is gone (same host, and that pid is not running, or is running but is a newer process that
reused the number, or the machine rebooted since) is stale and is taken over with a note. A lock
from another host cannot be checked from here: it is reported, with the way to remove it.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..util import host_name, pid_alive

LOCK_NAME = ".lock"
_WRITING_GRACE_S = 2.0  # an empty lock file younger than this is being written by its owner
_HELD: set[str] = set()  # tokens of the locks this process holds


class RunDirLocked(RuntimeError):
    """The run directory is in use by another live process."""


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: enough to tell, on the same host, whether that process still runs."""

    pid: int
    host: str
    boot_id: str | None
    start_ticks: int | None  # the process's start time in clock ticks since boot (Linux)
    since: float
    token: str

    @classmethod
    def current(cls) -> "Owner":
        pid = os.getpid()
        return cls(pid, host_name(), _boot_id(), _proc_stat(pid)[1], time.time(), secrets.token_hex(8))

    @classmethod
    def parse(cls, text: str) -> "Owner | None":
        try:
            data = json.loads(text)
            if int(data["pid"]) <= 0:  # os.kill(0 or -n, 0) would ask about process groups
                return None
            return cls(
                int(data["pid"]),
                str(data["host"]),
                data.get("boot_id"),
                data.get("start_ticks"),
                float(data.get("since", 0.0)),
                str(data["token"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "an unknown time"
        return f"pid {self.pid} on host {self.host!r}, since {since}"

    def is_gone(self) -> bool | None:
        """True: that process has ended; False: it runs; None: it is on another host (cannot tell)."""
        if self.host != host_name():
            return None
        if self.boot_id is not None and _boot_id() not in (None, self.boot_id):
            return True  # the machine rebooted since
        if self.pid == os.getpid():
            return self.token not in _HELD  # our pid, but not our lock: an earlier process had this pid
        if not pid_alive(self.pid):
            return True
        state, ticks = _proc_stat(self.pid)
        if state == "Z":
            return True  # ended, only not yet reaped by its parent
        return self.start_ticks is not None and ticks not in (None, self.start_ticks)


class RunLock:
    """Holds `run_dir/.lock` while in use; `acquire()` raises RunDirLocked if a live process holds it."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.owner: Owner | None = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self.owner is not None

    def acquire(self) -> "RunLock":
        if self.owner is not None:
            raise RuntimeError(f"this RunLock already holds {self.path}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        me = Owner.current()
        _HELD.add(me.token)  # before the file exists: another thread of ours must never see it as stale
        try:
            for _ in range(100):  # each turn either takes the lock, raises, or removes a stale one
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
                except FileExistsError:
                    self._clear_stale_or_raise()
                    continue
                try:
                    os.write(fd, json.dumps(asdict(me)).encode())
                    os.fsync(fd)
                except OSError:  # disk full, say: leave no empty lock behind
                    self.path.unlink(missing_ok=True)
                    raise
                finally:
                    os.close(fd)
                self.owner = me
                return self
            raise RunDirLocked(f"could not lock run directory {str(self.run_dir)!r}: its lock file {str(self.path)!r} keeps changing")
        except BaseException:
            _HELD.discard(me.token)
            raise

    def release(self) -> None:
        """Removes the lock file if it is still ours; does nothing when not held."""
        if self.owner is None:
            return
        owner, self.owner = self.owner, None
        current = _read(self.path)
        if current is not None and (found := Owner.parse(current)) is not None and found.token == owner.token:
            self.path.unlink(missing_ok=True)
        _HELD.discard(owner.token)  # only now: until the file is gone, our threads must see it as live

    def _clear_stale_or_raise(self) -> None:
        text = _read(self.path)
        if text is None:
            return  # removed meanwhile: try again
        owner = Owner.parse(text)
        if owner is None:  # empty or partial: its creator may be writing it right now
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age < _WRITING_GRACE_S:
                time.sleep(0.05)
                return
            reason = "its lock file is empty or unreadable (left by a crash)"
        else:
            gone = owner.is_gone()
            if gone is None:
                raise RunDirLocked(
                    f"run directory {str(self.run_dir)!r} is in use by {owner.describe()} (another host, so it cannot be "
                    f"checked from here); if that run has ended, delete {str(self.path)!r}"
                )
            if not gone:
                raise RunDirLocked(
                    f"run directory {str(self.run_dir)!r} is in use by {owner.describe()}: wait for it to end or stop it, "
                    f"or use another run directory"
                )
            reason = f"{owner.describe()} is no longer running"
        if _take_over(self.path, text):
            print(f"gradloop: taking over the stale lock of {str(self.run_dir)!r}: {reason}", file=sys.stderr)


def _take_over(path: Path, seen: str) -> bool:
    """Removes the lock file if it still holds `seen`; safe against another process doing the same."""
    aside = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)  # atomic: of several processes, one moves this file
    except FileNotFoundError:
        return False
    if _read(aside) == seen:
        aside.unlink(missing_ok=True)
        return True
    # It changed after we judged it (a new owner took it meanwhile): put it back, unless a newer one exists.
    try:
        os.link(aside, path)
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)
    return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return None


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """The process's state letter and start time in clock ticks since boot (Linux; else None, None)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
        return fields[0], int(fields[19])  # fields 3 and 22
    except (OSError, ValueError, IndexError):
        return None, None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
