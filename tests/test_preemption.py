"""Preemption under torchrun: a signal to one rank, to both at different steps, or to the launcher
stops every rank at the same step; one checkpoint resumes bit-identically; every rank exits 143."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import free_port

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from torch import nn
    import gradloop as gl

    rank = int(os.environ["RANK"])
    out, mode, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
    g = torch.Generator().manual_seed(0)
    X = torch.randn(203, 8, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()

    class Preempt(gl.Callback):
        def on_optimizer_step(self, trainer):
            step = trainer.state.global_step
            if mode == "rank1" and rank == 1 and step == 9:
                os.kill(os.getpid(), signal.SIGTERM)
            if mode == "both" and step == (9 if rank == 0 else 11):
                os.kill(os.getpid(), signal.SIGTERM)
            if mode == "launcher" and rank == 0 and step == 9:
                os.kill(os.getppid(), signal.SIGTERM)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    callbacks = [] if resume or mode == "straight" else [Preempt()]
    trainer = gl.Trainer(net, lr=0.01, max_epochs=3, seed=3, run_dir=os.path.join(out, "run"), callbacks=callbacks)
    code = 0
    try:
        history = trainer.fit((X, y), val=(X[:50], y[:50]), batch_size=16, resume="last" if resume else None)
    except SystemExit as stop:
        code = stop.code
    with open(os.path.join(out, f"exit{rank}.json"), "w") as f:
        json.dump({"code": code, "step": trainer.state.global_step}, f)
    if code == 0:
        torch.save({"model": net.state_dict(), "optimizer": trainer.optimizer.state_dict()}, os.path.join(out, f"final{rank}.pt"))
        with open(os.path.join(out, f"history{rank}.json"), "w") as f:
            json.dump([{k: v for k, v in e.items() if k != "time"} for e in trainer.history.epochs], f)
    sys.exit(code)
    """
)


def _torchrun(out: Path, mode: str, phase: str) -> subprocess.CompletedProcess[str]:
    script = out / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               "--master_port", str(free_port()), str(script), str(out), mode, phase]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def _final(out: Path) -> tuple[dict, list]:
    return torch.load(out / "final0.pt"), json.loads((out / "history0.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list]:
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    out = tmp_path_factory.mktemp("straight")
    done = _torchrun(out, "straight", "fit")
    assert done.returncode == 0, done.stderr[-3000:]
    return _final(out)


@pytest.mark.parametrize("mode", ["rank1", "both", "launcher"])
def test_a_signal_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path: Path, straight, mode: str) -> None:
    done = _torchrun(tmp_path, mode, "fit")
    exits = [json.loads((tmp_path / f"exit{rank}.json").read_text()) for rank in (0, 1)]
    assert [e["code"] for e in exits] == [143, 143], done.stderr[-3000:]
    # one step for all, a step or two after the first signal reaches a rank (the launcher passes it on a little later)
    assert exits[0]["step"] == exits[1]["step"] and 9 <= exits[0]["step"] <= (11 if mode != "launcher" else 13)
    assert 'File "' + str(tmp_path) not in done.stderr and "gradloop/" not in done.stderr, done.stderr[-3000:]  # no rank's traceback
    assert "exitcode  : -15" not in done.stderr, done.stderr[-3000:]  # no rank killed while it exits
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()

    resumed = _torchrun(tmp_path, mode, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state, history = _final(tmp_path)
    expected_state, expected_history = straight
    for key, value in expected_state["model"].items():
        assert torch.equal(value, state["model"][key]), key
    for index, saved in expected_state["optimizer"]["state"].items():
        assert all(torch.equal(saved[k], state["optimizer"]["state"][index][k]) for k in saved)
    assert history == expected_history  # the interrupted epoch's metrics too: every rank's partial sums were kept
