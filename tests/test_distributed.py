"""A real 2-process torchrun run on CPU (Gloo): DDP, data shards, all-reduced metrics, rank-0 files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.data import distributed
from helpers import free_port

SCRIPT = textwrap.dedent(
    """
    import atexit, json, os, sys
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import gradloop as gl

    rank = int(os.environ["RANK"])
    out = sys.argv[1]

    def record_group_at_exit():  # registered before gradloop's teardown, so it runs after it (LIFO)
        with open(os.path.join(out, f"group_at_exit{rank}.txt"), "w") as f:
            f.write(str(torch.distributed.is_initialized()))

    atexit.register(record_group_at_exit)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(203, 8, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()
    Xv = torch.randn(61, 8, generator=g)
    yv = (Xv[:, 0] + Xv[:, 1] > 0).long()

    def model():
        torch.manual_seed(1000 + rank)  # different weights on each rank: DDP starts them all from rank 0's
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    results = {}
    # in-memory tensors, with a run_dir, gradient accumulation and clipping
    net = model()
    trainer = gl.Trainer(net, lr=0.01, max_epochs=3, run_dir=os.path.join(out, "run"),
                         accumulate_grad_batches=2, grad_clip_norm=1.0)
    history = trainer.fit((X, y), val=(Xv, yv), batch_size=16)
    torch.save(net.state_dict(), os.path.join(out, f"tensors{rank}.pt"))
    results["tensors"] = {"history": dict(history), "steps": trainer.state.global_step,
                          "batches": trainer.batches_per_epoch, "test": trainer.test((Xv, yv), batch_size=7)}
    class BatchLosses(gl.Callback):  # runs on every rank: sees the mean batch loss of all ranks
        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, trainer, loss):
            self.losses.append(float(loss))

    # a Dataset, batched by gradloop's own loader; per-batch callbacks on every rank
    net = model()
    batch_losses = BatchLosses()
    trainer = gl.Trainer(net, optimizer="sgd", lr=0.1, max_epochs=2,
                         callbacks=[batch_losses, gl.TerminateOnNaN(), gl.EarlyStopping(patience=5)])
    history = trainer.fit(TensorDataset(X, y), val=TensorDataset(Xv, yv), batch_size=32)
    torch.save(net.state_dict(), os.path.join(out, f"dataset{rank}.pt"))
    results["dataset"] = {"history": dict(history), "steps": trainer.state.global_step,
                          "batches": trainer.batches_per_epoch, "batch_losses": batch_losses.losses}
    # a step of one's own that logs a value besides the loss, on ((X1, X2), y) inputs
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(2000 + rank)
            self.a, self.b = nn.Linear(4, 16), nn.Linear(4, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, a, b):
            return self.head(torch.relu(self.a(a) + self.b(b)))

    def step(model, batch):
        (a, b), target = batch
        logits = model(a, b)
        loss = nn.functional.cross_entropy(logits, target)
        return {"loss": loss, "margin": (logits[:, 1] - logits[:, 0]).abs().mean(), "outputs": logits, "targets": target}

    net = TwoInputs()
    trainer = gl.Trainer(net, lr=0.01, max_epochs=2, step=step, metrics=["accuracy"])
    history = trainer.fit(((X[:, :4], X[:, 4:]), y), val=((Xv[:, :4], Xv[:, 4:]), yv), batch_size=16)
    torch.save(net.state_dict(), os.path.join(out, f"step{rank}.pt"))
    results["step"] = {"history": dict(history), "steps": trainer.state.global_step, "batches": trainer.batches_per_epoch}
    with open(os.path.join(out, f"results{rank}.json"), "w") as f:
        json.dump(results, f)
    """
)


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(203, 8, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()
    Xv = torch.randn(61, 8, generator=g)
    yv = (Xv[:, 0] + Xv[:, 1] > 0).long()
    return X, y, Xv, yv


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    out = tmp_path_factory.mktemp("ddp")
    script = out / "train.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        "--master_port",
        str(free_port()),
        str(script),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done


def _results(out: Path) -> list[dict]:
    return [json.loads((out / f"results{rank}.json").read_text()) for rank in (0, 1)]


def _without_time(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "time"}


@pytest.mark.parametrize("run", ["tensors", "dataset", "step"])
def test_ranks_end_with_identical_weights_and_history(torchrun, run: str) -> None:
    out, _ = torchrun
    first, second = (torch.load(out / f"{run}{rank}.pt") for rank in (0, 1))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    r0, r1 = (r[run] for r in _results(out))
    assert _without_time(r0["history"]) == _without_time(r1["history"])  # all-reduced: the same numbers
    assert r0["steps"] == r1["steps"]
    if run == "dataset":
        assert len(r0["batch_losses"]) == 2 * 4 and r0["batch_losses"] == r1["batch_losses"]
    if run == "step":
        assert {"margin", "val_margin", "accuracy", "val_accuracy"} <= set(r0["history"])


def test_each_rank_trains_on_its_padded_shard(torchrun) -> None:
    r0, _ = _results(torchrun[0])
    # 203 samples over 2 ranks: 102 each (one repeated), 7 batches of 16, 4 steps of 2 batches per epoch
    assert r0["tensors"]["batches"] == 7 and r0["tensors"]["steps"] == 3 * 4
    assert r0["dataset"]["batches"] == 4 and r0["dataset"]["steps"] == 2 * 4


@pytest.mark.parametrize("run", ["tensors", "dataset"])
def test_logged_metrics_are_those_of_the_whole_validation_set(torchrun, run: str) -> None:
    out, _ = torchrun
    X, y, Xv, yv = _data()
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    net.load_state_dict(torch.load(out / f"{run}0.pt"))
    whole = gl.Trainer(net, default_callbacks=False, device="cpu").validate((Xv, yv), batch_size=61)
    history = _results(out)[0][run]["history"]
    assert history["val_loss"][-1] == pytest.approx(whole["val_loss"], abs=1e-6)
    assert history["val_accuracy"][-1] == pytest.approx(whole["val_accuracy"], abs=1e-12)
    if run == "tensors":
        test = _results(out)[1][run]["test"]  # test() under torchrun: shards, all-reduced, on every rank
        assert test["test_loss"] == pytest.approx(whole["val_loss"], abs=1e-6)
        assert test["test_accuracy"] == pytest.approx(whole["val_accuracy"], abs=1e-12)


def test_rank_zero_alone_writes_and_prints(torchrun) -> None:
    out, done = torchrun
    run = out / "run"
    assert (run / "model.safetensors").is_file()
    assert any((run / "checkpoints").iterdir())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # one writer: no duplicated rows
    history = _results(out)[0]["tensors"]["history"]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(history["val_loss"], rel=1e-12)
    # one progress line per epoch and run, from rank 0 only (the runs without a run_dir print too)
    epoch_lines = [line for line in done.stdout.splitlines() if "val_loss" in line]
    assert len(epoch_lines) == 3 + 2 + 2, done.stdout


def test_the_process_group_is_torn_down_at_exit(torchrun) -> None:
    out, done = torchrun
    assert [(out / f"group_at_exit{rank}.txt").read_text() for rank in (0, 1)] == ["False", "False"]
    assert "terminate called" not in done.stderr


def test_one_process_is_not_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.world() == (0, 1, 0) and not distributed.is_distributed() and distributed.is_rank_zero()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.is_distributed()
    trainer = gl.Trainer(nn.Linear(2, 2), device="cpu", default_callbacks=False)
    assert trainer._train_model is trainer.model


def test_shards_match_distributed_sampler() -> None:
    from torch.utils.data import DistributedSampler

    order = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    for rank in range(3):
        padded = distributed.shard_index(order, rank, 3, pad=True)
        assert len(padded) == distributed.shard_size(11, rank, 3, True) == 4
        sampler = DistributedSampler(range(11), num_replicas=3, rank=rank, shuffle=False)
        assert padded.tolist() == [order[i].item() for i in sampler]
        plain = distributed.shard_index(order, rank, 3, pad=False)
        assert len(plain) == distributed.shard_size(11, rank, 3, False)
    covered = sorted(i for r in range(3) for i in distributed.shard_index(order, r, 3, pad=False).tolist())
    assert covered == list(range(11))


def test_a_users_loader_without_a_distributed_sampler_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    dataset = TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    plain = DataLoader(dataset, batch_size=4, shuffle=True)
    assert distributed.unsharded_loader_warning(plain) is None  # one process: nothing to shard
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert "DistributedSampler(dataset)" in distributed.unsharded_loader_warning(plain)
    sharded = DataLoader(dataset, batch_size=4, sampler=DistributedSampler(dataset, num_replicas=2, rank=0))
    assert distributed.unsharded_loader_warning(sharded) is None


def test_strategies_are_checked() -> None:
    assert gl.Trainer(nn.Linear(2, 2), strategy="ddp", device="cpu")._train_model is not None
    with pytest.raises(ValueError, match=r"unknown strategy 'dpp' \(did you mean 'ddp'\?\): use one of auto, ddp"):
        gl.Trainer(nn.Linear(2, 2), strategy="dpp")
