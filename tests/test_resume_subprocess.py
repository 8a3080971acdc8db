"""SIGTERM to a real training process at a random step, then resume: bit-identical to no interruption."""

import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import gradloop as gl

    torch.set_num_threads(1)
    run_dir, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(240, 10, generator=g)
    y = (X[:, :2].sum(dim=1) > 0).long() + (X[:, 2] > 0.8).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))

    class Announce(gl.Callback):
        def on_train_batch_end(self, trainer, loss):
            print(f"step {trainer.state.global_step}", flush=True)
            time.sleep(0.02)  # gives the test time to aim its signal; changes no number

    scheduler = gl.LRScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.7), interval="step")
    trainer = gl.Trainer(model, optimizer="adam", lr=5e-3, metrics=["accuracy"], max_epochs=6, seed=3, run_dir=run_dir,
                         callbacks=[scheduler, gl.EarlyStopping(patience=10, restore_best_weights=True), Announce()])
    data = (X, y) if kind == "tensors" else TensorDataset(X, y)
    val = (X[:60], y[:60]) if kind == "tensors" else TensorDataset(X[:60], y[:60])
    history = trainer.fit(data, val=val, batch_size=32, resume="last")
    torch.save({"model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                "history": [{k: v for k, v in e.items() if k != "time"} for e in history.epochs]}, out)
""")


def run(script, run_dir, out, kind, stop_at=None):
    process = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(out), kind], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if stop_at is not None:
        for line in process.stdout:
            if line.strip() == f"step {stop_at}":
                process.send_signal(signal.SIGTERM)
                break
    stdout, stderr = process.communicate(timeout=240)
    return process.returncode, stderr


@pytest.mark.parametrize("kind", ["tensors", "dataset"])
def test_sigterm_at_a_random_step_then_resume_is_bit_identical(tmp_path, kind):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    code, err = run(script, tmp_path / "straight", tmp_path / "straight.pt", kind)
    assert code == 0, err

    stop_at = random.Random().randint(2, 40)  # 8 steps per epoch, 48 in all
    code, err = run(script, tmp_path / "run", tmp_path / "unused.pt", kind, stop_at=stop_at)
    assert code == 143, err
    assert "resume with" in err and (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    code, err = run(script, tmp_path / "run", tmp_path / "resumed.pt", kind)
    assert code == 0, err
    assert "resuming from" in err

    straight = torch.load(tmp_path / "straight.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), f"{name} differs after a stop at step {stop_at}"
    for index, state in straight["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][key]), f"optimizer {key} differs"
    assert straight["history"] == resumed["history"]


def test_a_second_sigint_aborts_at_once_and_keeps_the_previous_checkpoint(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.replace("time.sleep(0.02)", "time.sleep(0.02 if trainer.state.global_step < 12 else 5)"))
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(tmp_path / "o.pt"), "tensors"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.strip() == "step 12":  # inside the 5 s sleep: the first SIGINT waits for the step to end
            break
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.ckpt")}
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two signals sent at once would reach Python's handler as one
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode in (130, -signal.SIGINT)
    assert "second interrupt" in err and "checkpoint written" not in err
    after = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert before == after and "last.ckpt" in after
