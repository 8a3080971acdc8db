"""Resume is exact: an interrupted and resumed run ends bit-identical to an uninterrupted one."""

import copy
import os
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import gradloop as gl


class SendSignalAt(gl.Callback):
    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, loss):
        if trainer.state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def make_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(203, 12, generator=g)
    y = (X[:, :3].sum(dim=1) > 0).long() + (X[:, 3] > 1).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    return X, y, model


def make_trainer(model, run_dir, extra=()):
    return gl.Trainer(
        model,
        optimizer="adam",
        lr=3e-3,
        metrics=["accuracy"],
        max_epochs=4,
        seed=7,
        run_dir=run_dir,
        callbacks=list(extra),
        default_callbacks=False,
        accumulate_grad_batches=2,
    )


def as_data(X, y, kind):
    return (X, y) if kind == "tensors" else TensorDataset(X, y)


def without_time(history):
    return [{k: v for k, v in e.items() if k != "time"} for e in history.epochs]


@pytest.mark.parametrize("kind", ["tensors", "dataset"])
@pytest.mark.parametrize("stop_step", [7, 12, 13])  # mid-epoch, exactly at an epoch end (7 steps/epoch), later
def test_signal_and_resume_is_bit_identical(tmp_path, kind, stop_step):
    X, y, model = make_problem()
    straight_model = copy.deepcopy(model)
    straight = make_trainer(straight_model, tmp_path / "straight")
    straight_history = straight.fit(as_data(X, y, kind), val=as_data(X[:50], y[:50], kind), batch_size=16)

    run = tmp_path / "interrupted"
    first = make_trainer(copy.deepcopy(model), run, [SendSignalAt(stop_step)])
    with pytest.raises(SystemExit) as exit_info:
        first.fit(as_data(X, y, kind), val=as_data(X[:50], y[:50], kind), batch_size=16)
    assert exit_info.value.code == 143
    assert (run / "checkpoints" / "last.ckpt").is_file()

    resumed_model = copy.deepcopy(model)
    resumed = make_trainer(resumed_model, run)
    history = resumed.fit(as_data(X, y, kind), val=as_data(X[:50], y[:50], kind), batch_size=16, resume="last")

    for a, b in zip(straight_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_time(history) == without_time(straight_history)
    assert resumed.state.global_step == straight.state.global_step


def test_sigint_exit_code_and_message(tmp_path, capsys):
    X, y, model = make_problem()
    trainer = make_trainer(model, tmp_path / "run", [SendSignalAt(3, signal.SIGINT)])
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit((X, y), batch_size=16)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "SIGINT" in err and "resume" in err
    assert trainer.stop_reason == "interrupted by SIGINT"


def test_resume_last_without_checkpoint_starts_fresh(tmp_path, capsys):
    X, y, model = make_problem()
    history = make_trainer(model, tmp_path / "run").fit((X, y), batch_size=16, resume="last")
    assert len(history.epochs) == 4
    assert "starting from scratch" in capsys.readouterr().err


def test_resume_last_without_run_dir_is_an_error():
    X, y, model = make_problem()
    trainer = gl.Trainer(model, max_epochs=1, default_callbacks=False)
    with pytest.raises(ValueError, match="run_dir"):
        trainer.fit((X, y), resume="last")


def test_resume_with_other_batch_size_mid_epoch_is_an_error(tmp_path):
    X, y, model = make_problem()
    trainer = make_trainer(copy.deepcopy(model), tmp_path / "run", [SendSignalAt(3)])
    with pytest.raises(SystemExit):
        trainer.fit((X, y), batch_size=16)
    with pytest.raises(ValueError, match="batch_size=16"):
        make_trainer(copy.deepcopy(model), tmp_path / "run").fit((X, y), batch_size=32, resume="last")


def test_save_and_load_checkpoint_on_a_fresh_trainer(tmp_path):
    X, y, model = make_problem()
    trainer = make_trainer(model, None)
    trainer.fit((X, y), batch_size=16)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    _, _, other = make_problem(seed=1)
    fresh = make_trainer(other, None)
    fresh.load_checkpoint(tmp_path / "a.ckpt")
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.history.epochs == trainer.history.epochs
    assert fresh.state.global_step == trainer.state.global_step


def test_a_run_dir_that_cannot_be_written_fails_before_training(tmp_path):
    X, y, model = make_problem()
    before = copy.deepcopy(model.state_dict())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # works as root too, unlike chmod
    trainer = make_trainer(model, blocker / "run")
    with pytest.raises(ValueError, match="cannot be written.*choose a writable directory"):
        trainer.fit((X, y), batch_size=16)
    assert all(torch.equal(a, b) for a, b in zip(before.values(), model.state_dict().values()))
