"""EarlyStopping through the real Trainer, with a scripted monitored value per epoch (Keras 3 semantics)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.callbacks.early_stopping import EarlyStopping
from helpers import Scripted

SEQUENCE = [10, 9, 8, 9, 8.9, 8.8, 8.7, 8.6, 8.5]


class Record(gl.Callback):
    """Keeps a copy of the weights at the end of every epoch."""

    def __init__(self):
        self.weights = []

    def on_epoch_end(self, trainer, logs):
        self.weights.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


class StopAt(gl.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, logs):
        if trainer.state.epoch == self.epoch:
            trainer.should_stop, trainer.stop_reason = True, "told to"


class SaveAt(gl.Callback):
    priority = 20  # after EarlyStopping has seen the epoch

    def __init__(self, epoch, path):
        self.epoch, self.path = epoch, path

    def on_epoch_end(self, trainer, logs):
        if trainer.state.epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 3, generator=g)
    return X, X @ torch.tensor([[1.0], [-2.0], [0.5]])


def model():
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def run(values, callbacks, name="score", val=True, max_epochs=None, net=None, resume=None, loss="mse"):
    """Fits a tiny regression on `values[epoch]` as metric `name`; returns the trainer."""
    metric = Scripted(values, name)
    trainer = gl.Trainer(
        net if net is not None else model(),
        optimizer="sgd",
        lr=0.05,
        loss=loss,
        metrics=[metric],
        callbacks=callbacks,
        max_epochs=max_epochs or len(values),
        default_callbacks=False,
        seed=1,
    )
    metric.trainer = trainer
    X, y = data()
    trainer.fit((X, y), val=(X, y) if val else None, batch_size=8, shuffle=False, resume=resume)
    return trainer


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_stops_at_keras_epoch_for_each_patience(patience):
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=patience)
    trainer = run(SEQUENCE, [stopper])
    expected = max(patience, 1) + 2
    assert stopper.stopped_epoch == expected
    assert len(trainer.history.epochs) == expected + 1
    assert trainer.stop_reason == f"early stopping at epoch {expected}"
    assert (stopper.best, stopper.best_epoch, stopper.wait) == (8.0, 2, max(patience, 1))


def test_never_stops_at_epoch_zero_and_runs_to_max_epochs_when_improving():
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=0)
    trainer = run([5, 4, 3, 2], [stopper])
    assert stopper.stopped_epoch == 0 and trainer.stop_reason == "max_epochs"
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=0)
    run([math.nan, math.nan, 1], [stopper])  # epoch 0 does not improve yet does not stop; epoch 1 stops
    assert stopper.stopped_epoch == 1


def test_restore_best_weights_after_early_stop():
    record, stopper = Record(), EarlyStopping(monitor="val_score", mode="min", patience=2, restore_best_weights=True)
    trainer = run(SEQUENCE, [record, stopper])
    assert stopper.stopped_epoch == 4 and stopper.best_epoch == 2
    assert same(trainer.model.state_dict(), record.weights[2])
    assert not same(record.weights[2], record.weights[4])


def test_restore_best_weights_when_baseline_is_never_beaten():
    # Keras 3: improvements over the best still count (and keep weights) but reset `wait` only when they
    # also beat the baseline, so training runs `patience` epochs and restores the best of them.
    record = Record()
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=3, baseline=5.0, restore_best_weights=True)
    trainer = run([10, 9, 8, 9.5, 9.7, 9.9], [record, stopper])
    assert stopper.stopped_epoch == 3 and stopper.best == 8.0 and stopper.best_epoch == 2
    assert same(trainer.model.state_dict(), record.weights[2])


def test_baseline_beaten_resets_wait():
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=1, baseline=5.0)
    run([10, 4, 4.5, 4.6], [stopper])
    assert stopper.stopped_epoch == 2 and stopper.best_epoch == 1


def test_restore_best_weights_when_another_callback_stops():
    record, stopper = Record(), EarlyStopping(monitor="val_score", mode="min", patience=10, restore_best_weights=True)
    trainer = run([5, 3, 4, 4.5, 1], [record, stopper, StopAt(3)])
    assert trainer.stop_reason == "told to" and stopper.stopped_epoch == 0
    assert len(trainer.history.epochs) == 4
    assert same(trainer.model.state_dict(), record.weights[1])


def test_restore_best_weights_at_max_epochs():
    record, stopper = Record(), EarlyStopping(monitor="val_score", mode="min", patience=5, restore_best_weights=True)
    trainer = run([3, 1, 2], [record, stopper])
    assert trainer.stop_reason == "max_epochs"
    assert same(trainer.model.state_dict(), record.weights[1])


def test_without_any_improvement_the_first_monitored_epoch_is_restored():
    record = Record()
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=2, restore_best_weights=True, start_from_epoch=1)
    trainer = run([math.nan] * 5, [record, stopper])
    assert stopper.stopped_epoch == 2 and stopper.best_epoch == 1 and stopper.best == math.inf
    assert same(trainer.model.state_dict(), record.weights[1])


def test_without_restore_the_last_weights_stay():
    record = Record()
    trainer = run(SEQUENCE, [record, EarlyStopping(monitor="val_score", mode="min", patience=2)])
    assert same(trainer.model.state_dict(), record.weights[-1])


@pytest.mark.parametrize(("min_delta", "stopped"), [(1.0, 1), (0.5, 1), (-0.5, 1), (0.4, 2), (0.0, 3)])
def test_min_delta_is_a_strict_absolute_margin(min_delta, stopped):
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=1, min_delta=min_delta)
    run([10, 9.5, 9.2, 9.2, 8.0], [stopper])
    assert stopper.min_delta == abs(min_delta)
    assert stopper.stopped_epoch == stopped


def test_max_mode():
    stopper = EarlyStopping(monitor="val_score", mode="max", patience=1, min_delta=0.05)
    run([0.5, 0.6, 0.62, 0.7, 0.71, 0.9], [stopper])
    assert stopper.stopped_epoch == 2 and stopper.best == 0.6


def test_start_from_epoch_ignores_the_warm_up():
    values = [10, 11, 12, 13, 9, 9.5, 9.8]
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=1, start_from_epoch=3)
    run(values, [stopper])
    assert stopper.stopped_epoch == 5 and stopper.best == 9.0 and stopper.best_epoch == 4
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=1)
    run(values, [stopper])
    assert stopper.stopped_epoch == 1


@pytest.mark.parametrize(("name", "mode"), [("accuracy", "max"), ("top_acc", "max"), ("my_error", "min"), ("mae", "min")])
def test_mode_auto_is_inferred_from_the_name(name, mode):
    values = [1, 2, 3, 2, 1, 0] if mode == "max" else [3, 2, 1, 2, 3, 4]
    stopper = EarlyStopping(monitor=f"val_{name}", patience=1)
    run(values, [stopper], name=name)
    assert stopper.mode == mode and stopper.stopped_epoch == 3


def test_val_loss_is_minimized():
    stopper = EarlyStopping(patience=1)
    run([0], [stopper], max_epochs=2)
    assert stopper.monitor == "val_loss" and stopper.mode == "min"


def test_unknown_direction_is_an_error_before_training():
    record = Record()
    with pytest.raises(ValueError, match=r"monitor='val_score'.*mode='min' or mode='max'"):
        run([1, 2], [record, EarlyStopping(monitor="val_score")])
    assert record.weights == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "up"}, ValueError, "mode must be 'auto', 'min' or 'max'; received: mode='up'"),
        ({"patience": -1}, ValueError, "patience=-1"),
        ({"patience": 1.5}, ValueError, "patience=1.5"),
        ({"start_from_epoch": -2}, ValueError, "start_from_epoch=-2"),
        ({"min_delta": "0.1"}, TypeError, "min_delta='0.1'"),
        ({"baseline": math.nan}, ValueError, "baseline=nan"),
        ({"monitor": 3}, TypeError, "monitor=3"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EarlyStopping(**kwargs)


def test_missing_monitor_lists_available_names():
    with pytest.raises(ValueError, match=r"'val_acc', which is not logged; available: loss, score, val_loss, val_score, lr"):
        run([1, 2], [EarlyStopping(monitor="val_acc", mode="max")])


def test_explicit_val_loss_never_falls_back():
    with pytest.raises(ValueError, match="'val_loss', which is not logged"):
        run([1, 2], [EarlyStopping(monitor="val_loss")], val=False)


def test_default_monitor_falls_back_to_loss_without_validation(capsys):
    scripted_loss = Scripted(SEQUENCE)

    def loss(outputs, targets):  # the scripted value, with a zero gradient
        return outputs.sum() * 0 + scripted_loss(outputs, targets)

    stopper = EarlyStopping(patience=1)
    trainer = gl.Trainer(model(), optimizer="sgd", lr=0.05, loss=loss, callbacks=[stopper], max_epochs=9, default_callbacks=False)
    scripted_loss.trainer = trainer
    X, y = data()
    trainer.fit((X, y), batch_size=8, shuffle=False)
    assert stopper.monitor == "loss" and stopper.stopped_epoch == 3
    assert trainer.history["loss"] == [10, 9, 8, 9]
    assert "monitors 'loss'" in capsys.readouterr().err


def test_state_dict_round_trip():
    stopper = EarlyStopping(monitor="val_score", mode="min", patience=5, restore_best_weights=True)
    trainer = run(SEQUENCE[:5], [stopper])
    state = stopper.state_dict()
    assert (state["wait"], state["best"], state["best_epoch"], state["stopped_epoch"]) == (2, 8.0, 2, 0)
    other = EarlyStopping(monitor="val_score", mode="min", patience=5, restore_best_weights=True)
    other.load_state_dict(copy.deepcopy(state))
    assert (other.wait, other.best, other.best_epoch, other.stopped_epoch) == (2, 8.0, 2, 0)
    assert same(other.best_weights, trainer.model.state_dict())


def test_resume_restores_counters_and_the_true_best_weights(tmp_path):
    initial = model()
    record = Record()
    straight = run(
        SEQUENCE,
        [record, EarlyStopping(monitor="val_score", mode="min", patience=2, restore_best_weights=True)],
        net=copy.deepcopy(initial),
    )
    assert straight.stop_reason == "early stopping at epoch 4"

    path = tmp_path / "epoch3.ckpt"  # after epoch 3: best at 2, wait 1, and the model holds epoch 3's weights
    run(
        SEQUENCE,
        [EarlyStopping(monitor="val_score", mode="min", patience=2, restore_best_weights=True), SaveAt(3, path)],
        net=copy.deepcopy(initial),
        max_epochs=4,
    )

    stopper = EarlyStopping(monitor="val_score", mode="min", patience=2, restore_best_weights=True)
    resumed = run(SEQUENCE, [stopper], net=nn.Linear(3, 1), resume=path)
    assert resumed.stop_reason == "early stopping at epoch 4"
    assert (stopper.best, stopper.best_epoch) == (8.0, 2)
    assert same(resumed.model.state_dict(), record.weights[2])
    assert same(resumed.model.state_dict(), straight.model.state_dict())
