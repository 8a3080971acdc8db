"""Per-step cost of the stop vote under torchrun (2 Gloo ranks on CPU).

    python bench/stop_vote.py            # launches itself under torchrun with 2 processes

Each rank trains the benchmark MLP (784 -> 128 -> 10, batch 64, Adam) on its shard of 60,000
MNIST-shaped samples for one epoch with the vote (gradloop as shipped) and one with the vote
replaced by a no-op, alternately, three times each; rank 0 prints the median step times.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time

import torch
from torch import nn


def worker() -> None:
    import gradloop as gl
    from gradloop.data import distributed
    from gradloop.persistence import signals

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60_000, 784, generator=g)
    y = (X[:, :10].argmax(dim=1)).long()
    real_vote, real_wrap = signals.StopVote.after_step, distributed.wrap
    times: dict[str, list[float]] = {"vote": [], "no vote": []}
    for _ in range(3):
        for label in ("vote", "no vote"):  # without: no flag in the gradient all-reduce, no reading of it
            signals.StopVote.after_step = real_vote if label == "vote" else (lambda self: False)
            distributed.wrap = real_wrap if label == "vote" else (lambda model, device, channel=None: real_wrap(model, device))
            model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
            trainer = gl.Trainer(model, lr=1e-3, max_epochs=1, default_callbacks=False, device="cpu", metrics=[])
            started = time.perf_counter()
            trainer.fit((X, y), batch_size=64)
            times[label].append((time.perf_counter() - started) / trainer.state.global_step)
    if int(os.environ["RANK"]) == 0:
        vote, plain = statistics.median(times["vote"]), statistics.median(times["no vote"])
        print(f"step with the vote {vote * 1e3:.3f} ms, without {plain * 1e3:.3f} ms: {vote / plain - 1:+.2%} per step")


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", GRADLOOP_STOP_VOTE_WORKER="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", __file__]  # fmt: skip
    sys.exit(subprocess.run(command, env=env).returncode)


if __name__ == "__main__":
    worker() if os.environ.get("GRADLOOP_STOP_VOTE_WORKER") else main()
