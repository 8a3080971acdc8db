"""The user's torch.cuda sync debug mode applies to the training steps only: gradloop lifts it for its
documented host reads (checks, each epoch's metrics and logs, checkpoints). The real check runs on a
GPU (tests/test_cuda.py); here torch.cuda's mode is a recording stand-in, so the mechanism is tested
on every machine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradloop as gl


@pytest.fixture
def fake_cuda_mode(monkeypatch):
    mode = {"now": 0, "sets": 0}

    def set_mode(value):
        mode["now"] = {"default": 0, "warn": 1, "error": 2}.get(value, value)
        mode["sets"] += 1

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode["now"])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_mode)
    return mode


class Record(gl.Callback):
    def __init__(self, mode):
        self.mode, self.seen = mode, {}

    def _note(self, hook):
        self.seen.setdefault(hook, set()).add(self.mode["now"])

    def on_fit_start(self, trainer):
        self._note("on_fit_start")

    def on_train_batch_end(self, trainer, loss):
        self._note("on_train_batch_end")

    def on_optimizer_step(self, trainer):
        self._note("on_optimizer_step")

    def on_validation_end(self, trainer, logs):
        self._note("on_validation_end")

    def on_epoch_end(self, trainer, logs):
        self._note("on_epoch_end")

    def on_fit_end(self, trainer):
        self._note("on_fit_end")


def test_the_mode_holds_inside_the_steps_and_is_lifted_for_the_epoch_work(fake_cuda_mode, tmp_path):
    X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    torch.manual_seed(0)
    record = Record(fake_cuda_mode)
    trainer = gl.Trainer(nn.Linear(4, 2), max_epochs=2, callbacks=[record], run_dir=tmp_path, val_every_n_steps=3, device="cpu")
    torch.cuda.set_sync_debug_mode("error")
    trainer.fit((X, y), val=(X[:16], y[:16]), batch_size=8)
    assert record.seen["on_train_batch_end"] == {2} and record.seen["on_optimizer_step"] == {2}  # the steps: checked
    for hook in ("on_fit_start", "on_validation_end", "on_epoch_end", "on_fit_end"):
        assert record.seen[hook] == {0}, hook  # gradloop's own host reads: lifted
    assert fake_cuda_mode["now"] == 2  # the user's mode is back after fit


def test_without_a_mode_set_nothing_is_switched(fake_cuda_mode):
    X, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    gl.Trainer(nn.Linear(4, 2), max_epochs=1, default_callbacks=False, device="cpu").fit((X, y), batch_size=8)
    assert fake_cuda_mode["sets"] == 0
