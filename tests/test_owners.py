"""One owner per concept: the Trainer, the CLI and the doctor give the same answer for the same thing."""

import copy
import os
import signal
from typing import Any, Callable

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


# Counts, numbers, the tensor walk, the loss rules, monitor modes, host names, dataset sizes: one owner each in the core,
# so the same bad value gets the same message wherever it is passed (a part that went back to its own copy fails here).
X, Y = torch.randn(16, 3), torch.randint(0, 2, (16,))


def _message(make: Callable[[Any], Any], value: Any) -> str:
    with pytest.raises(ValueError) as info:
        make(value)
    return str(info.value)


POSITIVE: dict[str, Callable[[Any], Any]] = {
    "max_epochs": lambda v: gl.Trainer(nn.Linear(3, 2), max_epochs=v),
    "batch_size": lambda v: gl.Trainer(nn.Linear(3, 2)).fit((X, Y), batch_size=v),
    "every_n_steps": lambda v: gl.EMA(every_n_steps=v),
    "num_steps": lambda v: gl.lr_find(nn.Linear(3, 2), (X, Y), num_steps=v),
    "overfit_steps": lambda v: gl.doctor(nn.Linear(3, 2), (X, Y), overfit_steps=v),
}
POSITIVE_OR_NONE: dict[str, Callable[[Any], Any]] = {
    "max_steps": lambda v: gl.Trainer(nn.Linear(3, 2), max_steps=v),
    "log_every_n_steps": lambda v: gl.JSONLLogger(log_every_n_steps=v),
    "every_n_epochs": lambda v: gl.ModelCheckpoint(every_n_epochs=v),
    "steps": lambda v: gl.check_resume(lambda: gl.Trainer(nn.Linear(3, 2)), (X, Y), steps=v),
}
NON_NEGATIVE: dict[str, Callable[[Any], Any]] = {
    "patience": lambda v: gl.EarlyStopping(patience=v),
    "start_epoch": lambda v: gl.SWA(swa_lr=0.1, start_epoch=v),
}


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "3"])
def test_a_count_gets_one_message_from_the_trainer_the_callbacks_the_doctor_and_the_resume_check(value: Any) -> None:
    for expected, makers in (("a positive integer", POSITIVE), ("a positive integer or None", POSITIVE_OR_NONE)):
        for name, make in makers.items():
            assert _message(make, value) == f"{name} must be {expected}; received: {name}={value!r}"
    if value != 0:
        for name, make in NON_NEGATIVE.items():
            assert _message(make, value) == f"{name} must be an integer >= 0; received: {name}={value!r}"


def test_the_counts_accept_what_they_say() -> None:
    gl.Trainer(nn.Linear(3, 2), max_epochs=1, max_steps=None)
    gl.EMA(every_n_steps=1)
    gl.JSONLLogger(log_every_n_steps=None)
    gl.EarlyStopping(patience=0)


NUMBERS: dict[str, Callable[[Any], Any]] = {
    "grad_clip_norm": lambda v: gl.Trainer(nn.Linear(3, 2), grad_clip_norm=v),
    "lr": lambda v: gl.Trainer(nn.Linear(3, 2), lr=v),
    "swa_lr": lambda v: gl.SWA(swa_lr=v, start_epoch=1),
    "min_delta": lambda v: gl.EarlyStopping(min_delta=v),
    "min_lr": lambda v: gl.ReduceLROnPlateau(min_lr=v),
    "every_n_seconds": lambda v: gl.PlotCurves(every_n_seconds=v),
    "overfit_lr": lambda v: gl.doctor(nn.Linear(3, 2), (X, Y), overfit_lr=v),
    "start_lr": lambda v: gl.lr_find(nn.Linear(3, 2), (X, Y), start_lr=v, end_lr=2.0),
}


@pytest.mark.parametrize("name", list(NUMBERS))
def test_a_bool_is_not_a_number_anywhere(name: str) -> None:
    """True passes every range check these numbers have (True > 0): only the core's `is_number` refuses it."""
    with pytest.raises((TypeError, ValueError), match=rf"{name}.*received: .*{name}=True"):
        NUMBERS[name](True)


def test_one_walk_over_nested_tensors_packed_sequences_included() -> None:
    from torch.nn.utils.rnn import pack_sequence

    from gradloop.data import devices
    from gradloop.doctor import training_checks
    from gradloop.resume_check import recording

    packed = pack_sequence([torch.ones(3, 2), torch.zeros(2, 2)])
    tree = {"x": (packed, [X]), "n": 3}
    assert [name for name, _ in devices.named_leaves(tree, "batch")] == [
        "batch['x'][0][0]",
        "batch['x'][0][1]",
        "batch['x'][1][0]",
    ]  # PackedSequence's data and batch_sizes; its sorted indices are None here
    assert [t.shape for t in devices.leaves(tree)] == [packed.data.shape, packed.batch_sizes.shape, X.shape]
    assert training_checks.leaves is devices.leaves and recording.named_leaves is devices.named_leaves
    assert gl.step.batch_size_of(tree) == packed.data.shape[0]  # the first tensor in the same walk


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.linear(x)}


def _raising_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("no loss today")


@pytest.mark.parametrize(
    "model, loss, error",
    [
        (_DictOut, "cross_entropy", TypeError),
        (lambda: nn.Linear(3, 2), _raising_loss, ValueError),
        (lambda: nn.Linear(3, 2), nn.CrossEntropyLoss(reduction="none"), ValueError),
    ],
    ids=["output-not-a-tensor", "loss-raises", "loss-not-a-scalar"],
)
def test_the_doctor_reports_what_the_trainer_raises_in_the_same_words(model: Callable[[], nn.Module], loss: Any, error: type) -> None:
    with pytest.raises(error) as raised:
        gl.Trainer(model(), loss=loss, max_epochs=1).fit((X, Y), batch_size=4)
    check = gl.doctor(model(), (X, Y), loss=loss, checks=["model.output"])["model.output"]
    assert check.status == "fail" and check.message == str(raised.value)


@pytest.mark.parametrize("name", ["val_loss", "val_acc", "f1", "perplexity", "throughput"])
def test_the_run_summary_picks_the_best_epoch_by_the_callbacks_mode(name: str) -> None:
    from gradloop.callbacks.monitor import infer_mode
    from gradloop.cli.summary import best_epoch

    rows = [{name: 2.0}, {name: 1.0}, {name: 3.0}]
    expected = {"min": (1, 1.0), "max": (2, 3.0)}[infer_mode(name, "auto", fallback="min")]
    assert best_epoch(rows, name) == expected
    with pytest.raises(ValueError, match="cannot tell whether monitor='throughput'"):
        infer_mode("throughput", "auto")


def test_run_records_and_run_locks_name_the_host_alike() -> None:
    """A run.json written on this host and a lock taken on it are both judged as this host's: one host name."""
    from gradloop import util
    from gradloop.cli import rundir
    from gradloop.persistence import runlock

    assert rundir.host_name is util.host_name and runlock.host_name is util.host_name
    owner = runlock.Owner.current()
    assert owner.host == util.host_name() and owner.is_gone() is not None  # None: another host
    assert rundir.effective_status({"status": "running", "host": owner.host, "pid": 2**22 + 12345}) == "interrupted"


def test_the_doctor_counts_a_dataset_as_the_trainer_does() -> None:
    """A Dataset with a length is counted (a note says how much was read); an IterableDataset has none."""
    from torch.utils.data import IterableDataset, TensorDataset

    from gradloop.doctor import inputs

    class Stream(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter(zip(X, Y))

    sized = inputs.read(TensorDataset(torch.randn(600, 3), torch.zeros(600)), "train", max_samples=300)
    assert sized.note == "first 512 of 600 samples"
    assert inputs.read(Stream(), "train", max_samples=8).note == ""
    assert inputs.length_or_none is gl.util.length_or_none
