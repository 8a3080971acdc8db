"""TerminateOnNaN stops at the first batch whose loss is not finite."""

from __future__ import annotations

import math

import torch
from torch import nn

import gradloop as gl
from gradloop.callbacks.nan import TerminateOnNaN


class BreaksAt(nn.Module):
    """A linear model whose output turns `value` (NaN or inf) at its `at`-th training forward pass (from 0)."""

    def __init__(self, at, value=math.nan):
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.at, self.value, self.calls = nn.Linear(3, 1), at, value, 0

    def forward(self, x):
        out = self.linear(x)
        if self.training:
            self.calls += 1
            if self.calls - 1 == self.at:
                out = out * self.value
        return out


class Batches(gl.Callback):
    def __init__(self):
        self.seen = 0

    def on_train_batch_end(self, trainer, loss):
        self.seen += 1


def run(net, callbacks, accumulate=1, max_epochs=3):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(32, 3, generator=g)  # batches of 4: 8 per epoch
    trainer = gl.Trainer(
        net,
        optimizer="sgd",
        lr=0.01,
        loss="mse",
        callbacks=callbacks,
        max_epochs=max_epochs,
        default_callbacks=False,
        accumulate_grad_batches=accumulate,
    )
    trainer.fit((X, X.sum(dim=1, keepdim=True)), val=(X[:8], X[:8].sum(dim=1, keepdim=True)), batch_size=4, shuffle=False)
    return trainer


def test_stops_after_the_batch_with_a_nan_loss(capsys):
    nan, batches = TerminateOnNaN(), Batches()
    trainer = run(BreaksAt(3), [nan, batches])
    assert batches.seen == 4  # batches 0..3, nothing after the bad one
    assert (nan.stopped_epoch, nan.stopped_batch, nan.stopped_step) == (0, 3, 4)
    assert trainer.state.global_step == 4 and len(trainer.history.epochs) == 1
    assert trainer.stop_reason.startswith("non-finite loss")
    assert trainer.stop_reason == "non-finite loss"
    assert "non-finite loss (nan) at epoch 0, batch 3 (global step 4)" in capsys.readouterr().err
    assert math.isnan(trainer.history["loss"][0])


def test_stops_on_an_infinite_loss_in_a_later_epoch(capsys):
    nan = TerminateOnNaN()
    trainer = run(BreaksAt(10, math.inf), [nan])  # the 11th batch: epoch 1, batch 2
    assert (nan.stopped_epoch, nan.stopped_batch, nan.stopped_step) == (1, 2, 11)
    assert trainer.stop_reason == "non-finite loss"
    assert "non-finite loss (inf) at epoch 1, batch 2" in capsys.readouterr().err
    assert len(trainer.history.epochs) == 2


def test_under_accumulation_stops_before_the_optimizer_step():
    # Accumulating 2: batch 2 opens the second group, so the bad gradient is never applied.
    nan = TerminateOnNaN()
    net = BreaksAt(2)
    trainer = run(net, [nan], accumulate=2)
    assert (nan.stopped_batch, nan.stopped_step) == (2, 1)
    assert trainer.state.global_step == 1
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_finite_losses_train_to_the_end():
    nan = TerminateOnNaN()
    trainer = run(BreaksAt(10**9), [nan], max_epochs=2)
    assert trainer.stop_reason == "max_epochs" and trainer.state.global_step == 16
    assert nan.stopped_step is None


def test_first_stop_reason_wins():
    class StopNow(gl.Callback):
        priority = -20  # before TerminateOnNaN

        def on_train_batch_end(self, trainer, loss):
            trainer.should_stop, trainer.stop_reason = True, "mine"

    trainer = run(BreaksAt(0), [TerminateOnNaN(), StopNow()])
    assert trainer.stop_reason == "mine"


def test_a_second_fit_starts_clean():
    nan = TerminateOnNaN()
    net = BreaksAt(5)
    run(net, [nan])
    assert nan.stopped_step is not None
    net.at = -1
    with torch.no_grad():
        for p in net.parameters():
            p.nan_to_num_(0.0)
    trainer = run(net, [nan], max_epochs=1)
    assert nan.stopped_step is None and trainer.stop_reason == "max_epochs"
