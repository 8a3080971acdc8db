"""A writer killed with SIGKILL at random moments never leaves a partial file that passes for a
checkpoint: after every kill the newest checkpoint verifies, loads and is internally consistent."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from gradloop.persistence import checkpoint, finding

KILLS = 30
KEEP = 2
SIZES = (10, 50_000, 500_000, 5_000_000)  # the largest spans several hash chunks (the threaded path)


def _writer(directory: str, seed: int, started: "multiprocessing.synchronize.Event") -> None:
    """What ModelCheckpoint does, as fast as it can: resume from the newest checkpoint, then
    write a periodic file, link last.ckpt to it, and delete periodic files beyond KEEP."""
    torch.set_num_threads(1)
    root = Path(directory)
    found = finding.load_latest(root)
    step = found[1]["step"] + 1 if found is not None else 0
    rng = random.Random(seed)
    while True:
        size = rng.choices(SIZES, weights=(4, 4, 4, 1))[0]
        state = {"step": step, "w": torch.full((size,), float(step)), "opt": {"m": torch.full((size // 2,), -float(step))}}
        first = checkpoint.save(state, root / f"epoch-0-step-{step}.ckpt")
        checkpoint.link(first, root / "last.ckpt")
        (root / f"epoch-0-step-{step - KEEP}.ckpt").unlink(missing_ok=True)
        started.set()
        step += 1


def _temp_files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.endswith(".gradloop-tmp")}


@pytest.mark.timeout(120)
def test_sigkill_at_random_moments_never_leaves_a_partial_checkpoint(tmp_path: Path) -> None:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "pytest", "gradloop.persistence.checkpoint"])  # children start in ms
    rng = random.Random(0)
    progress, partial_files_seen = -1, set()
    for kill in range(KILLS):
        started = context.Event()
        process = context.Process(target=_writer, args=(str(tmp_path), kill, started), daemon=True)
        process.start()
        assert started.wait(30), "the writer did not finish a first save"
        time.sleep(rng.uniform(0.02, 0.1))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        assert process.exitcode == -signal.SIGKILL

        for path in tmp_path.glob("*.ckpt"):  # whatever looks like a checkpoint is a complete one
            checkpoint.verify(path)
        path, state = finding.load_latest(tmp_path)
        assert torch.equal(state["w"], torch.full_like(state["w"], float(state["step"])))
        assert torch.equal(state["opt"]["m"], torch.full_like(state["opt"]["m"], -float(state["step"])))
        assert state["step"] >= progress, f"kill {kill}: went back from step {progress} to {state['step']} ({path.name})"
        progress = state["step"]
        partial_files_seen |= _temp_files(tmp_path)

    assert progress > KILLS  # every writer made progress from where the previous one was killed
    # Some kills hit a save half way: their temp files were there, and were never taken for checkpoints.
    assert partial_files_seen, "no kill landed inside a save; the test did not test anything"
    old = time.time() - 3600
    for name in _temp_files(tmp_path):
        os.utime(tmp_path / name, (old, old))
    checkpoint.save({"step": progress + 1}, tmp_path / "last.ckpt")
    assert not _temp_files(tmp_path)  # the next save clears what killed writers left
