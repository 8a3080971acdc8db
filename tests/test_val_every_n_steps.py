"""Long epochs: validation every N optimizer steps as well as at each epoch's end."""

import copy
import json
import os
import signal

import pytest
import torch
from torch import nn

import gradloop as gl


def problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(160, 6, generator=g)
    y = (X[:, 0] > 0).long()
    torch.manual_seed(0)
    return X, y, nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


class Validations(gl.Callback):
    def __init__(self):
        self.seen = []

    def on_validation_end(self, trainer, logs):
        self.seen.append((trainer.state.epoch, trainer.validating_at_step, trainer.state.global_step, sorted(logs)))


def test_validations_come_every_n_steps_and_at_each_epochs_end(tmp_path):
    X, y, model = problem()
    seen = Validations()
    # 160 samples, batch 16, 2 batches a step: 5 steps an epoch; every 2 steps, 3 epochs
    trainer = gl.Trainer(model, max_epochs=3, accumulate_grad_batches=2, val_every_n_steps=2, callbacks=[seen],
                         run_dir=tmp_path, device="cpu")  # fmt: skip
    history = trainer.fit((X, y), val=(X[:40], y[:40]), batch_size=16)
    inside = [(epoch, step) for epoch, step, _, _ in seen.seen if step is not None]
    assert inside == [(0, 2), (0, 4), (1, 6), (1, 8), (2, 12), (2, 14)]  # 10 is epoch 1's end: not twice
    at_end = [global_step for _, step, global_step, _ in seen.seen if step is None]
    assert at_end == [5, 10, 15]
    assert all(names == ["val_accuracy", "val_loss"] for *_, names in seen.seen)
    assert len(history.epochs) == 3  # the History stays per epoch
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validation_rows = [(r["epoch"], r["global_step"]) for r in rows if r["type"] == "validation"]
    assert validation_rows == inside
    assert [r["type"] for r in rows if r["epoch"] == 0] == ["validation", "validation", "epoch"]


def test_validation_inside_an_epoch_changes_no_training(tmp_path):
    X, y, model = problem()
    with_val, without = copy.deepcopy(model), copy.deepcopy(model)
    kwargs = dict(max_epochs=2, seed=1, default_callbacks=False, device="cpu")
    h1 = gl.Trainer(with_val, val_every_n_steps=3, **kwargs).fit((X, y), val=(X[:40], y[:40]), batch_size=16)
    h2 = gl.Trainer(without, **kwargs).fit((X, y), val=(X[:40], y[:40]), batch_size=16)
    for a, b in zip(with_val.parameters(), without.parameters()):
        assert torch.equal(a, b)  # it draws no random numbers: dropout's masks stay the same
    assert h1.epochs[-1]["val_loss"] == h2.epochs[-1]["val_loss"]


class StopAt(gl.Callback):
    def __init__(self, step):
        self.step = step

    def on_optimizer_step(self, trainer):
        if trainer.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_resume_between_validations_is_bit_identical(tmp_path):
    X, y, model = problem()

    def make(net, run_dir, extra=()):
        return gl.Trainer(net, max_epochs=3, seed=2, val_every_n_steps=4, run_dir=run_dir, device="cpu",
                          callbacks=[Validations(), *extra])  # fmt: skip

    straight_model = copy.deepcopy(model)
    straight = make(straight_model, tmp_path / "straight")
    history = straight.fit((X, y), val=(X[:40], y[:40]), batch_size=16)
    with pytest.raises(SystemExit):
        make(copy.deepcopy(model), tmp_path / "run", [StopAt(13)]).fit((X, y), val=(X[:40], y[:40]), batch_size=16)
    resumed_model = copy.deepcopy(model)
    resumed = make(resumed_model, tmp_path / "run").fit((X, y), val=(X[:40], y[:40]), batch_size=16, resume="last")
    for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    without_time = [{k: v for k, v in e.items() if k != "time"} for e in history.epochs]
    assert [{k: v for k, v in e.items() if k != "time"} for e in resumed.epochs] == without_time
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    straight_rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows if r["type"] == "validation"] == [
        r["global_step"] for r in straight_rows if r["type"] == "validation"
    ]


def test_val_every_n_steps_must_be_a_positive_integer():
    with pytest.raises(ValueError, match=r"val_every_n_steps must be a positive integer or None; received: val_every_n_steps=0"):
        gl.Trainer(nn.Linear(2, 2), val_every_n_steps=0)
