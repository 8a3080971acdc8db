"""One owner per concept: the Trainer, the CLI and the doctor give the same answer for the same thing."""

import copy
import os
import signal

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.names.losses import loss_name, loss_task
from gradloop.names.optim import check_optimizer_args


def problem(n=96, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 1).long()
    torch.manual_seed(seed)
    return X, y, nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, classes))


@pytest.mark.parametrize(
    "module, name",
    [(nn.CrossEntropyLoss(), "cross_entropy"), (nn.MSELoss(), "mse"), (nn.BCEWithLogitsLoss(), "bce_with_logits"), (nn.NLLLoss(), "nll")],
)
def test_a_loss_module_is_its_name(module, name) -> None:
    assert loss_name(module) == loss_name(name) == name
    assert loss_task(loss_name(module)) == loss_task(name)

    class Custom(nn.CrossEntropyLoss):  # a subclass may compute anything: not recognised
        pass

    assert loss_name(Custom()) is None


def test_cross_entropy_module_trains_exactly_like_its_name() -> None:
    X, y, model = problem()
    by_module, by_name = copy.deepcopy(model), copy.deepcopy(model)
    kwargs = dict(max_epochs=2, default_callbacks=False, device="cpu", seed=3)
    h_module = gl.Trainer(by_module, loss=nn.CrossEntropyLoss(), **kwargs).fit((X, y), val=(X, y), batch_size=16)
    h_name = gl.Trainer(by_name, loss="cross_entropy", **kwargs).fit((X, y), val=(X, y), batch_size=16)
    assert "val_accuracy" in h_module  # the default metric of a classification loss
    assert [{k: v for k, v in e.items() if k != "time"} for e in h_module.epochs] == [
        {k: v for k, v in e.items() if k != "time"} for e in h_name.epochs
    ]
    for a, b in zip(by_module.parameters(), by_name.parameters()):
        assert torch.equal(a, b)


def test_cross_entropy_module_gets_the_label_check_of_its_name() -> None:
    X, y, model = problem()
    y = y.clone()
    y[5] = 7
    messages = []
    for loss in (nn.CrossEntropyLoss(), "cross_entropy"):
        with pytest.raises(ValueError) as info:
            gl.Trainer(copy.deepcopy(model), loss=loss, default_callbacks=False, device="cpu").fit((X, y))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert "labels must lie in [0, 3)" in messages[0] and "contains 7" in messages[0]


def test_the_optimizer_checks_are_one() -> None:
    with pytest.raises(ValueError, match=r"optimizer='sgd' needs a learning rate: pass lr=") as trainer_error:
        gl.Trainer(nn.Linear(2, 2), optimizer="sgd", lr=None, device="cpu")
    with pytest.raises(ValueError) as check_error:
        check_optimizer_args("sgd", None)
    assert str(trainer_error.value) == str(check_error.value)
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm' \(did you mean 'adam'\?\)"):
        check_optimizer_args("adamm", 1e-3)


def test_logged_names_are_the_trainers() -> None:
    trainer = gl.Trainer(nn.Linear(6, 3), grad_clip_norm=1.0, device="cpu", default_callbacks=False)
    assert trainer.logged_names(has_val=True) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr", "time", "grad_norm"]
    assert "grad_norm" not in gl.Trainer(nn.Linear(6, 3), device="cpu").logged_names(has_val=False)


class StopAfterLastBatchOfFirstEpoch(gl.Callback):
    def on_train_batch_end(self, trainer, loss):
        if trainer.state.epoch == 0 and trainer.state.batch_in_epoch == trainer.batches_per_epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_the_epochs_lr_survives_a_stop_after_its_last_step(tmp_path) -> None:
    """A per-step schedule has moved the LR past the one the epoch's last step used: the resume point keeps it."""
    X, y, model = problem()

    def trainer(net, run_dir, extra=()):
        schedule = gl.LRScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), interval="step")
        return gl.Trainer(
            net,
            optimizer="sgd",
            lr=0.1,
            max_epochs=2,
            run_dir=run_dir,
            device="cpu",
            seed=1,
            default_callbacks=False,
            callbacks=[schedule, *extra],
        )

    straight = trainer(copy.deepcopy(model), tmp_path / "straight").fit((X, y), batch_size=32)
    first = trainer(copy.deepcopy(model), tmp_path / "run", [StopAfterLastBatchOfFirstEpoch()])
    with pytest.raises(SystemExit):
        first.fit((X, y), batch_size=32)
    resumed = trainer(copy.deepcopy(model), tmp_path / "run").fit((X, y), batch_size=32, resume="last")
    assert resumed["lr"] == straight["lr"] == [0.1 * 0.5**2, 0.1 * 0.5**5]


def test_ignored_labels_pass_the_label_check_as_the_loss_skips_them() -> None:
    X, y, model = problem()
    y = y.clone()
    y[::7] = -100  # nn.CrossEntropyLoss's default ignore_index
    reference = copy.deepcopy(model)
    history = gl.Trainer(model, optimizer="sgd", lr=0.1, max_epochs=1, default_callbacks=False, device="cpu", metrics=[]).fit(
        (X, y), batch_size=96, shuffle=False
    )
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(reference(X), y)
    loss.backward()
    optimizer.step()
    assert history["loss"] == [pytest.approx(loss.item(), abs=1e-6)]
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_column_labels_are_told_to_flatten() -> None:
    X, y, model = problem()
    with pytest.raises(ValueError, match=r"needs labels of shape \(N,\).*flatten the labels with y.reshape\(-1\)"):
        gl.Trainer(model, device="cpu", default_callbacks=False).fit((X, y.reshape(-1, 1)))
