"""RunLock: one process per run directory; a second one fails at once naming the holder; a lock
left by a dead process is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.persistence import runlock
from gradloop.persistence.runlock import Owner, RunDirLocked, RunLock

HOLDER = """
import sys, time
from gradloop.persistence import runlock
with runlock.RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def write_lock(run_dir: Path, **fields) -> Path:
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": runlock._boot_id(),
        "start_ticks": None,
        "since": time.time(),
        "token": "f" * 16,
        **fields,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    path.write_text(json.dumps(owner))
    return path


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_held_while_in_use_and_removed_after(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run") as lock:
        owner = json.loads((tmp_path / "run" / ".lock").read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and lock.held
    assert not (tmp_path / "run" / ".lock").exists() and not lock.held
    with pytest.raises(ZeroDivisionError):
        with RunLock(tmp_path / "run"):
            raise ZeroDivisionError
    assert not (tmp_path / "run" / ".lock").exists()  # released on the way out of an exception too


def test_second_holder_in_this_process_fails_at_once(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        started = time.monotonic()
        with pytest.raises(RunDirLocked, match=rf"run directory '.*' is in use by pid {os.getpid()} on host"):
            RunLock(tmp_path).acquire()
        assert time.monotonic() - started < 1
    RunLock(tmp_path).acquire().release()


def test_another_process_holds_it_until_killed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=rf"in use by pid {holder.pid} on host .*: wait for it to end or stop it"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(tmp_path):  # the holder died without releasing: its lock is stale
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock of '{tmp_path}': pid {holder.pid}" in capsys.readouterr().err


def test_stale_locks_are_taken_over(tmp_path: Path) -> None:
    write_lock(tmp_path, pid=dead_pid())
    RunLock(tmp_path).acquire().release()
    write_lock(tmp_path, token="0" * 16)  # our pid, but not our lock: an earlier process with the same pid
    RunLock(tmp_path).acquire().release()
    parent_ticks = runlock._proc_stat(os.getppid())[1]
    if parent_ticks is not None:  # a running pid that was reused by a newer process
        write_lock(tmp_path, pid=os.getppid(), start_ticks=parent_ticks + 1)
        RunLock(tmp_path).acquire().release()
        write_lock(tmp_path, pid=os.getppid(), start_ticks=parent_ticks)
        with pytest.raises(RunDirLocked, match=f"pid {os.getppid()}"):
            RunLock(tmp_path).acquire()
    write_lock(tmp_path, pid=os.getppid(), boot_id="an-earlier-boot")  # the machine rebooted since
    RunLock(tmp_path).acquire().release()


def test_empty_lock_file_waits_for_its_writer_then_counts_as_stale(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    path.write_text("")
    old = time.time() - 60
    os.utime(path, (old, old))
    RunLock(tmp_path).acquire().release()


def test_lock_from_another_host_is_reported(tmp_path: Path) -> None:
    path = write_lock(tmp_path, host="elsewhere", pid=12345)
    with pytest.raises(RunDirLocked, match=rf"pid 12345 on host 'elsewhere'.*another host.*delete '{path}'"):
        RunLock(tmp_path).acquire()


def test_exactly_one_of_many_racing_threads_gets_it(tmp_path: Path) -> None:
    barrier, results = threading.Barrier(8), []

    def contend() -> None:
        lock = RunLock(tmp_path)
        barrier.wait()
        try:
            lock.acquire()
            results.append(lock)
        except RunDirLocked:
            results.append(None)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [lock for lock in results if lock is not None]
    assert len(results) == 8 and len(winners) == 1
    winners[0].release()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path: Path) -> None:
    lock = RunLock(tmp_path).acquire()
    write_lock(tmp_path, token="1" * 16)
    lock.release()
    assert Owner.parse((tmp_path / ".lock").read_text()).token == "1" * 16


def test_fit_on_a_locked_run_dir_fails_before_training(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    trainer = gl.Trainer(model, run_dir=tmp_path, default_callbacks=False, device="cpu", max_epochs=1)
    with RunLock(tmp_path):
        with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
            trainer.fit((torch.randn(8, 2), torch.randint(0, 2, (8,))), batch_size=4)
    assert torch.equal(model.weight, before)
