"""strategy="fsdp" under real torchrun (2 Gloo ranks): FSDP2 trains as DDP does, its sharded DCP
checkpoints resume bit-identically, restore exactly on another world size (2 -> 1, 1 -> 2), are
verified against their manifest, and model.safetensors holds the full weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.persistence import finding, sharded
from gradloop.persistence.checkpoint import CheckpointError
from gradloop.persistence.verification import CheckpointInfo, verify_file
from gradloop.persistence.weights import read_weights
from helpers import torchrun

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from torch import nn
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    import gradloop as gl

    out, strategy, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    source = sys.argv[4] if len(sys.argv) > 4 else None
    rank = int(os.environ.get("RANK", "0"))
    g = torch.Generator().manual_seed(0)
    X = torch.randn(203, 8, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()

    def full(trainer):  # every rank takes part; rank 0 writes
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model, optimizer = get_state_dict(trainer.model, trainer.optimizer, options=options)
        return {"model": model, "optimizer": optimizer}

    def dump(trainer, name):
        state = full(trainer)
        if rank == 0:
            torch.save(state, os.path.join(out, name))

    class Probe(gl.Callback):
        def on_epoch_end(self, trainer, logs):
            if trainer.state.epoch == 0:
                dump(trainer, "epoch0.pt")

        def on_optimizer_step(self, trainer):
            if mode == "stop" and trainer.state.global_step == 9 and rank == 1 % max(1, int(os.environ.get("WORLD_SIZE", "1"))):
                os.kill(os.getpid(), signal.SIGTERM)

    policy = {"fsdp_policy": lambda model: [model[0]]} if strategy == "fsdp" else {}  # the first layer, then the root
    if mode == "refuse":  # what FSDP does not support is one clear error on every rank
        errors = []
        for attempt in (lambda: gl.Trainer(nn.Linear(8, 2), strategy="fsdp", callbacks=[gl.EMA()]),
                        lambda: gl.Trainer(nn.Linear(8, 2), strategy="fsdp").find_lr((X, y))):
            try:
                attempt()
            except ValueError as err:
                errors.append(str(err))
        with open(os.path.join(out, f"errors{rank}.json"), "w") as f:
            json.dump(errors, f)
        sys.exit(0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    trainer = gl.Trainer(net, optimizer="adamw", lr=0.01, max_epochs=3, seed=3, strategy=strategy, grad_clip_norm=1.0,
                         accumulate_grad_batches=2, precision="bf16-mixed" if mode == "bf16" else "32",
                         run_dir=os.path.join(out, "run"), callbacks=[Probe()], **policy)
    if source is not None:
        trainer.load_checkpoint(source)
        dump(trainer, "loaded.pt")
    code = 0
    try:
        trainer.fit((X, y), val=(X[:50], y[:50]), batch_size=16, resume=source or ("last" if mode == "resume" else None))
    except SystemExit as stop:
        code = stop.code
    with open(os.path.join(out, f"exit{rank}.json"), "w") as f:
        json.dump(code, f)
    if code == 0:
        dump(trainer, "final.pt")
        if rank == 0:
            with open(os.path.join(out, "history.json"), "w") as f:
                json.dump([{k: v for k, v in e.items() if k != "time"} for e in trainer.history.epochs], f)
    sys.exit(code)
    """
)


def _run(out: Path, strategy: str, mode: str, *source: Path, nproc: int | None = 2) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    script = out / "train.py"
    script.write_text(SCRIPT)
    if nproc is None:  # one plain process, no torchrun
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        return subprocess.run([sys.executable, str(script), str(out), strategy, mode, *map(str, source)],
                              env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)  # fmt: skip
    return torchrun(script, out, strategy, mode, *source, nproc=nproc)


def _ok(done: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert done.returncode == code, done.stderr[-3000:]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted FSDP run on 2 ranks (3 epochs), its checkpoints and final state."""
    out = tmp_path_factory.mktemp("straight")
    _ok(_run(out, "fsdp", "fit"))
    return out


def test_fsdp_trains_like_ddp_and_exports_the_full_weights(straight: Path, tmp_path: Path) -> None:
    _ok(_run(tmp_path, "ddp", "fit"))
    ddp, fsdp = torch.load(tmp_path / "final.pt"), torch.load(straight / "final.pt")
    for name, weight in ddp["model"].items():
        assert torch.allclose(weight, fsdp["model"][name], atol=1e-6), name
    exported = read_weights(straight / "run" / "model.safetensors")
    assert exported.keys() == fsdp["model"].keys()
    assert all(torch.equal(exported[name], fsdp["model"][name]) for name in exported)
    assert (straight / "run" / "checkpoints" / "last.ckpt" / "manifest.json").is_file()


def test_bf16_mixed_fsdp_trains_like_ddp_under_autocast(tmp_path: Path) -> None:
    for strategy in ("ddp", "fsdp"):  # FSDP: bf16 parameters and float32 gradient reduction, autocast as well
        _ok(_run(tmp_path / strategy, strategy, "bf16"))
    ddp, fsdp = (torch.load(tmp_path / strategy / "final.pt")["model"] for strategy in ("ddp", "fsdp"))
    assert all(fsdp[name].dtype == torch.float32 and torch.allclose(ddp[name], fsdp[name], atol=1e-5) for name in ddp)


def test_a_sharded_checkpoint_resumes_bit_identically(straight: Path, tmp_path: Path) -> None:
    stopped = _run(tmp_path, "fsdp", "stop")
    assert stopped.returncode != 0 and "terminate called" not in stopped.stderr  # both ranks exit 143, neither aborts
    assert [json.loads((tmp_path / f"exit{rank}.json").read_text()) for rank in (0, 1)] == [143, 143]  # SIGTERM to rank 1
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "manifest.json"]
    _ok(_run(tmp_path, "fsdp", "resume"))
    assert _equal(torch.load(tmp_path / "final.pt"), torch.load(straight / "final.pt"))
    assert json.loads((tmp_path / "history.json").read_text()) == json.loads((straight / "history.json").read_text())


def test_two_ranks_checkpoint_restores_exactly_in_one_process(straight: Path, tmp_path: Path) -> None:
    source = straight / "run" / "checkpoints" / "epoch-0-step-4.ckpt"
    _ok(_run(tmp_path, "fsdp", "fit", source, nproc=1))
    assert _equal(torch.load(tmp_path / "loaded.pt"), torch.load(straight / "epoch0.pt"))
    assert len(json.loads((tmp_path / "history.json").read_text())) == 3  # and training went on to the end


def test_one_process_checkpoint_restores_exactly_on_two_ranks(tmp_path: Path) -> None:
    single = tmp_path / "single"
    _ok(_run(single, "fsdp", "fit", nproc=None))  # "fsdp" without torchrun: one process
    source = single / "run" / "checkpoints" / "epoch-0-step-7.ckpt"
    _ok(_run(tmp_path / "two", "fsdp", "fit", source))
    assert _equal(torch.load(tmp_path / "two" / "loaded.pt"), torch.load(single / "epoch0.pt"))
    assert len(json.loads((tmp_path / "two" / "history.json").read_text())) == 3


def test_a_truncated_shard_is_named_and_resume_falls_back(straight: Path, tmp_path: Path, capsys) -> None:
    directory = tmp_path / "checkpoints"
    shutil.copytree(straight / "run" / "checkpoints", directory)  # hard links kept as copies
    shard = directory / "last.ckpt" / "__1_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp.*truncated"):
        sharded.verify(directory / "last.ckpt")
    (directory / "best.ckpt" / "__0_0.distcp").unlink()
    with pytest.raises(CheckpointError, match=r"lacks its file '__0_0\.distcp'"):
        sharded.verify(directory / "best.ckpt")
    newest_good = max((p for p in directory.iterdir() if p.name.startswith("epoch-")), key=lambda p: p.stat().st_mtime_ns)
    os.utime(directory / "last.ckpt")  # the broken one is the newest
    assert finding.latest(directory) == newest_good
    assert "skipping a broken checkpoint" in capsys.readouterr().err
    info = verify_file(newest_good)  # what `gradloop verify` reports
    assert isinstance(info, CheckpointInfo) and (info.epoch, info.step) == (3, 12)
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp"):
        verify_file(directory / "last.ckpt")


def test_an_optimizer_instance_is_refused() -> None:
    net = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="pass a name"):
        gl.Trainer(net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), strategy="fsdp")


def test_the_policy_must_be_callable() -> None:
    with pytest.raises(TypeError, match="fsdp_policy must be a function"):
        gl.Trainer(nn.Linear(2, 2), strategy="fsdp", fsdp_policy=[nn.Linear(2, 2)])  # type: ignore[arg-type]


def test_weight_copying_callbacks_and_find_lr_are_refused_under_torchrun(tmp_path: Path) -> None:
    _ok(_run(tmp_path, "fsdp", "refuse"))
    for rank in (0, 1):
        ema, find_lr = json.loads((tmp_path / f"errors{rank}.json").read_text())
        assert "EMA keeps its own copy of the weights" in ema and "strategy='ddp'" in ema
        assert "find_lr" in find_lr and "one process" in find_lr
