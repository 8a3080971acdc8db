"""ReduceLROnPlateau and LRScheduler through the real Trainer, checked against torch's schedulers run by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, SequentialLR, StepLR
from torch.optim.lr_scheduler import ReduceLROnPlateau as TorchReduceLROnPlateau

import gradloop as gl
from gradloop.callbacks.lr import LRScheduler, ReduceLROnPlateau
from helpers import Scripted

LR = 0.1
PLATEAU = [1.0, 0.9, 0.95, 0.95, 0.96, 0.8, 0.85, 0.795, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91]


class StepLRs(gl.Callback):
    """The LR of every group at each optimizer step (runs before the LR callbacks, which step after it)."""

    priority = -1

    def __init__(self):
        self.lrs = []

    def on_optimizer_step(self, trainer):
        self.lrs.append([g["lr"] for g in trainer.optimizer.param_groups])


class SaveAt(gl.Callback):
    priority = 20

    def __init__(self, epoch, path):
        self.epoch, self.path = epoch, path

    def on_epoch_end(self, trainer, logs):
        if trainer.state.epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def data(n=40):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=g)
    return X, X @ torch.tensor([[1.0], [-2.0], [0.5]])


def model():
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def run(callbacks, max_epochs, values=(0.0,), optimizer="sgd", net=None, resume=None, accumulate=1, n=40):
    """Fits a tiny regression, batch size 8, with `values[epoch]` logged as `score`/`val_score`."""
    metric = Scripted(values)
    trainer = gl.Trainer(
        net if net is not None else model(),
        optimizer=optimizer,
        lr=LR,
        loss="mse",
        metrics=[metric],
        callbacks=callbacks,
        max_epochs=max_epochs,
        default_callbacks=False,
        seed=1,
        accumulate_grad_batches=accumulate,
    )
    metric.trainer = trainer
    X, y = data(n)
    trainer.fit((X, y), val=(X, y), batch_size=8, shuffle=False, resume=resume)
    return trainer


def torch_plateau_lrs(values, **kwargs):
    """The LR of each epoch when torch's ReduceLROnPlateau is stepped by hand with `values`."""
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=LR)
    scheduler = TorchReduceLROnPlateau(optimizer, **kwargs)
    lrs = []
    for value in values:
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(value)
    return lrs


def twin_lrs(factory, steps):
    """The LR at each of `steps` optimizer steps of a scheduler built by `factory` and stepped by hand."""
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=LR)
    scheduler = factory(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


# ----------------------------------------------------------------------------- ReduceLROnPlateau
@pytest.mark.parametrize(("patience", "cooldown", "min_lr"), [(0, 0, 0.0), (1, 0, 0.0), (1, 2, 0.0), (0, 1, 0.002)])
def test_reduce_lr_on_plateau_follows_torch(patience, cooldown, min_lr):
    callback = ReduceLROnPlateau(
        monitor="val_score", mode="min", factor=0.5, patience=patience, min_delta=0.01, cooldown=cooldown, min_lr=min_lr
    )
    trainer = run([callback], len(PLATEAU), PLATEAU)
    expected = torch_plateau_lrs(
        PLATEAU, mode="min", factor=0.5, patience=patience, threshold=0.01, threshold_mode="abs", cooldown=cooldown, min_lr=min_lr
    )
    assert trainer.history["lr"] == expected
    assert len(set(expected)) >= 3  # the schedule really lowers the LR, more than once
    assert trainer.optimizer.param_groups[0]["lr"] == callback.scheduler.get_last_lr()[0]


def test_min_delta_is_absolute():
    # Steps of 0.01 at a scale of 1000: improvements for an absolute 1e-4 (the default; torch's relative
    # default would see none), none for an absolute 0.05.
    values = [1000 - 0.01 * e for e in range(6)]
    small = run([ReduceLROnPlateau(monitor="val_score", mode="min", patience=0)], 6, values)
    large = run([ReduceLROnPlateau(monitor="val_score", mode="min", patience=0, min_delta=0.05)], 6, values)
    assert small.history["lr"] == [LR] * 6
    assert large.history["lr"] == pytest.approx([LR, LR, LR * 0.1, LR * 0.01, LR * 1e-3, LR * 1e-4])
    assert large.history["lr"] == torch_plateau_lrs(values, patience=0, threshold=0.05, threshold_mode="abs")


def test_reduce_lr_on_plateau_infers_max_mode_and_defaults_to_val_loss():
    accuracy = Scripted([0.5, 0.6, 0.6, 0.6], "accuracy")
    callback = ReduceLROnPlateau(monitor="val_accuracy", patience=0, factor=0.5)
    trainer = gl.Trainer(
        model(), optimizer="sgd", lr=LR, loss="mse", metrics=[accuracy], callbacks=[callback], max_epochs=4, default_callbacks=False
    )
    accuracy.trainer = trainer
    X, y = data()
    trainer.fit((X, y), val=(X, y), batch_size=8, shuffle=False)
    assert callback.scheduler.mode == "max" and callback.scheduler.threshold_mode == "abs"
    assert trainer.history["lr"] == [LR, LR, LR, LR * 0.5]  # 0.6 improves on 0.5; the first repeat of 0.6 does not
    default = ReduceLROnPlateau()
    run([default], 1)
    assert default.monitor == "val_loss" and default.scheduler.mode == "min"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"factor": 1.0}, ValueError, "factor=1.0"),
        ({"factor": 0}, ValueError, "factor=0"),
        ({"patience": -1}, ValueError, "patience=-1"),
        ({"cooldown": 0.5}, ValueError, "cooldown=0.5"),
        ({"min_delta": -0.1}, ValueError, "min_delta=-0.1"),
        ({"min_lr": -1.0}, ValueError, "min_lr=-1.0"),
        ({"mode": "down"}, ValueError, "mode='down'"),
        ({"monitor": None}, TypeError, "monitor=None"),
    ],
)
def test_reduce_lr_on_plateau_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ReduceLROnPlateau(**kwargs)


def test_reduce_lr_on_plateau_missing_monitor_lists_names():
    with pytest.raises(ValueError, match="'val_acc', which is not logged; available: loss, score, val_loss"):
        run([ReduceLROnPlateau(monitor="val_acc", mode="max")], 1)


def test_reduce_lr_on_plateau_resume_continues_the_schedule(tmp_path):
    def callback():
        return ReduceLROnPlateau(monitor="val_score", mode="min", factor=0.5, patience=1, min_delta=0.01, cooldown=1)

    straight = run([callback()], len(PLATEAU), PLATEAU)
    path = tmp_path / "epoch5.ckpt"
    run([callback(), SaveAt(5, path)], 6, PLATEAU)  # stops with bad epochs and a cooldown in flight
    resumed_callback = callback()
    resumed = run([resumed_callback], len(PLATEAU), PLATEAU, net=nn.Linear(3, 1), resume=path)
    assert resumed.history["lr"] == straight.history["lr"]
    assert resumed_callback.scheduler.state_dict() == straight.callbacks.callbacks[0].scheduler.state_dict()
    assert torch.equal(resumed.model.weight, straight.model.weight)


def test_reduce_lr_on_plateau_state_dict_round_trip():
    first = ReduceLROnPlateau(monitor="val_score", mode="min", patience=3)
    run([first], 3, [1.0, 0.5, 0.7])
    state = copy.deepcopy(first.state_dict())
    assert state["scheduler"]["best"] == 0.5 and state["scheduler"]["num_bad_epochs"] == 1
    second = ReduceLROnPlateau(monitor="val_score", mode="min", patience=3)
    second.scheduler = TorchReduceLROnPlateau(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=LR))
    second.load_state_dict(state)
    assert second.scheduler.best == 0.5 and second.scheduler.num_bad_epochs == 1 and second.scheduler.patience == 3


# ----------------------------------------------------------------------------- LRScheduler
def test_epoch_interval_steps_once_per_epoch():
    trainer = run([LRScheduler(lambda opt: StepLR(opt, step_size=2, gamma=0.5))], 5)
    assert trainer.history["lr"] == [LR, LR, LR * 0.5, LR * 0.5, LR * 0.25]


def test_step_interval_steps_once_per_optimizer_step_under_accumulation():
    # 40 samples, batches of 8: 5 batches per epoch; accumulating 2 makes 3 optimizer steps (2 + 2 + 1).
    steps = StepLRs()
    callback = LRScheduler(lambda opt: LambdaLR(opt, lambda s: 1 / (1 + s)), interval="step")
    trainer = run([steps, callback], 2, accumulate=2)
    assert trainer.state.global_step == 6 and callback.scheduler.last_epoch == 6
    assert [lrs[0] for lrs in steps.lrs] == pytest.approx([LR / (1 + s) for s in range(6)])
    assert trainer.history["lr"] == pytest.approx([LR / 3, LR / 6])  # the LR of each epoch's last step
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(LR / 7)


def test_step_interval_without_accumulation_steps_every_batch():
    callback = LRScheduler(lambda opt: StepLR(opt, step_size=1, gamma=0.5), interval="step")
    trainer = run([callback], 2)
    assert callback.scheduler.last_epoch == 10
    assert trainer.history["lr"] == pytest.approx([LR * 0.5**4, LR * 0.5**9])


def test_warmup_then_cosine_with_torch_schedulers():
    def warmup_cosine(opt):
        return SequentialLR(opt, [LinearLR(opt, start_factor=0.1, total_iters=4), CosineAnnealingLR(opt, T_max=6)], milestones=[4])

    steps = StepLRs()
    run([steps, LRScheduler(warmup_cosine, interval="step")], 2)  # 2 epochs x 5 steps
    lrs = [lrs[0] for lrs in steps.lrs]
    assert lrs == pytest.approx(twin_lrs(warmup_cosine, 10))
    assert lrs[0] == pytest.approx(0.1 * LR) and max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == 4
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5])) and all(a > b for a, b in zip(lrs[4:], lrs[5:]))


def test_scheduler_instance_on_the_trainers_optimizer():
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.1)
    trainer = run([LRScheduler(scheduler)], 3, optimizer=optimizer, net=net)
    assert trainer.history["lr"] == pytest.approx([LR, LR * 0.1, LR * 0.01])


def test_scheduler_on_another_optimizer_is_an_error():
    other = torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=LR)
    with pytest.raises(ValueError, match="another optimizer than the trainer's: pass a factory"):
        run([LRScheduler(StepLR(other, step_size=1))], 1)


def test_monitor_steps_torch_reduce_lr_on_plateau():
    callback = LRScheduler(lambda opt: TorchReduceLROnPlateau(opt, patience=0, factor=0.5), monitor="val_score")
    trainer = run([callback], 4, [1.0, 2.0, 0.5, 3.0])
    assert trainer.history["lr"] == [LR, LR, LR * 0.5, LR * 0.5]


def test_torch_plateau_without_monitor_is_an_error():
    with pytest.raises(ValueError, match="monitor='val_loss'"):
        run([LRScheduler(lambda opt: TorchReduceLROnPlateau(opt))], 1)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((3,), {}, TypeError, "received: 3"),
        ((lambda opt: StepLR(opt, 1),), {"interval": "batch"}, ValueError, "interval='batch'"),
        ((lambda opt: StepLR(opt, 1),), {"interval": "step", "monitor": "val_loss"}, ValueError, "use interval='epoch'"),
    ],
)
def test_lr_scheduler_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        LRScheduler(*args, **kwargs)


def test_factory_must_return_a_scheduler():
    with pytest.raises(TypeError, match="must return a torch LR scheduler; it returned int"):
        run([LRScheduler(lambda opt: 3)], 1)


def test_every_param_group_lr_is_logged():
    net = model()
    optimizer = torch.optim.SGD([{"params": [net.weight]}, {"params": [net.bias], "lr": 0.01}], lr=LR)
    steps = StepLRs()
    trainer = run([steps, LRScheduler(lambda opt: StepLR(opt, step_size=1, gamma=0.5), interval="step")], 2, optimizer=optimizer, net=net)
    assert trainer.history["lr"] == pytest.approx([LR * 0.5**4, LR * 0.5**9])
    assert trainer.history["lr_group1"] == pytest.approx([0.01 * 0.5**4, 0.01 * 0.5**9])
    assert "lr_group2" not in trainer.history

    net = model()
    optimizer = torch.optim.SGD([{"params": [net.weight]}, {"params": [net.bias], "lr": 0.01}], lr=LR)
    trainer = run([ReduceLROnPlateau(monitor="val_score", mode="min", patience=0)], 3, [1, 2, 3], optimizer=optimizer, net=net)
    assert trainer.history["lr"] == pytest.approx([LR, LR, LR * 0.1])
    assert trainer.history["lr_group1"] == pytest.approx([0.01, 0.01, 0.001])


def test_single_group_logs_no_group_lrs():
    trainer = run([LRScheduler(lambda opt: StepLR(opt, step_size=1))], 1)
    assert not any(name.startswith("lr_group") for name in trainer.history)


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_lr_scheduler_resume_continues_the_schedule(tmp_path, interval):
    def callback():
        return LRScheduler(
            lambda opt: SequentialLR(opt, [LinearLR(opt, 0.1, total_iters=3), CosineAnnealingLR(opt, 8)], milestones=[3]), interval=interval
        )

    straight = run([callback()], 5)
    path = tmp_path / "epoch2.ckpt"
    run([callback(), SaveAt(2, path)], 3)
    resumed_callback = callback()
    resumed = run([resumed_callback], 5, net=nn.Linear(3, 1), resume=path)
    assert resumed.history["lr"] == straight.history["lr"]
    assert resumed_callback.scheduler.last_epoch == straight.callbacks.callbacks[0].scheduler.last_epoch
    assert torch.equal(resumed.model.weight, straight.model.weight)


def test_lr_scheduler_state_dict_holds_the_torch_state():
    callback = LRScheduler(lambda opt: StepLR(opt, step_size=2, gamma=0.5))
    run([callback], 3)
    state = copy.deepcopy(callback.state_dict())
    assert state["scheduler"]["last_epoch"] == 3
    other = LRScheduler(StepLR(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=LR), step_size=2, gamma=0.5))
    other.load_state_dict(state)
    assert other.scheduler.last_epoch == 3 and other.scheduler.get_last_lr() == pytest.approx([LR * 0.5])
