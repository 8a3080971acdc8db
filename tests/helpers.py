"""Small pieces shared by several test files."""

import csv
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import torch
from torch.utils.data import Dataset


class Scripted:
    """A metric whose value over all of epoch e is values[e]: the trainer it reads is bound after construction."""

    def __init__(self, values, name="score"):
        self.values, self.__name__, self.trainer = list(values), name, None

    def __call__(self, outputs, targets):
        epoch = self.trainer.state.epoch if self.trainer is not None else 0
        return torch.tensor(float(self.values[min(epoch, len(self.values) - 1)]), dtype=torch.float64)


class PairDataset(Dataset):
    """A plain map-style Dataset of (x, y) pairs."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


LABELS = ["cat", "dog", "eel"]

BLOBS_CONFIG = """
[data]
path = "blobs.csv"
target = "animal"
batch_size = 16
[model]
hidden = [8]
[train]
max_epochs = 2
"""


def write_blobs_csv(path, n=150, seed=0, with_target=True):
    """Three well-separated clusters in 4-D with text labels (a CSV for the command line)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    X = rng.normal(size=(n, 4)) + np.eye(3, 4)[labels] * 4
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["f1", "f2", "f3", "f4"] + (["animal"] if with_target else []))
        for x, label in zip(X, labels):
            writer.writerow([f"{v:.5f}" for v in x] + ([LABELS[label]] if with_target else []))
    return [LABELS[i] for i in labels]


def run_cli(capsys, *args):
    """(exit code, stdout, stderr) of `gradloop ARGS` run in this process."""
    from gradloop.cli.main import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sigterm_at(step):
    """A callback that sends this process SIGTERM after the batch that ends at global step `step`."""
    import gradloop as gl

    class SigtermAt(gl.Callback):
        def on_train_batch_end(self, trainer, loss):
            if trainer.state.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)

    return SigtermAt()


def straight_and_resumed(make_model, make_trainer, make_train, stop_step, tmp_path, **fit_options):
    """Trains once straight through and once stopped by SIGTERM at `stop_step` then resumed, each from a
    fresh `make_model()`, trainer (`make_trainer(model, run_dir, callbacks)`) and training data
    (`make_train()`, called once per fit); returns (straight model, resumed model, resumed trainer)."""

    import pytest

    straight_model = make_model()
    make_trainer(straight_model, tmp_path / "straight", []).fit(make_train(), **fit_options)
    run = tmp_path / "interrupted"
    with pytest.raises(SystemExit):
        make_trainer(make_model(), run, [sigterm_at(stop_step)]).fit(make_train(), **fit_options)
    resumed_model = make_model()
    resumed = make_trainer(resumed_model, run, [])
    resumed.fit(make_train(), resume="last", **fit_options)
    return straight_model, resumed_model, resumed


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def free_port() -> int:
    """A local TCP port nobody listens on now, for a torchrun rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args, nproc=2, timeout=120):
    """`torchrun --nproc_per_node=nproc script args...` on CPU (Gloo) on a free local port; the CompletedProcess."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               "--master_port", str(port), str(script), *map(str, args)]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
