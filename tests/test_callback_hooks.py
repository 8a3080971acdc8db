"""The callback contract itself: when on_optimizer_step fires, which hooks a callback listens to
(declared by `Callback.listens`, never by swapping methods), priorities, and misspelled hooks."""

import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset

import gradloop as gl
from gradloop.callbacks.checkpoint import ModelCheckpoint
from gradloop.callbacks.logging import JSONLLogger, read_jsonl
from gradloop.callbacks.lr import LRScheduler
from gradloop.callbacks.progress import ProgressBar
from gradloop.persistence import checkpoint


def data(n=40):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=g)
    return X, X @ torch.tensor([[1.0], [-2.0], [0.5]])


def trainer(callbacks, **options):
    torch.manual_seed(0)
    return gl.Trainer(
        nn.Linear(3, 1), optimizer="sgd", lr=0.01, loss="mse", callbacks=callbacks, device="cpu", default_callbacks=False, **options
    )


class Events(gl.Callback):
    """Records every optimizer step and batch end, with the progress the trainer reports then."""

    def __init__(self):
        self.events = []

    def on_optimizer_step(self, trainer):
        state = trainer.state
        self.events.append(("step", state.epoch, state.global_step, state.step_in_epoch, state.batch_in_epoch))

    def on_train_batch_end(self, trainer, loss):
        self.events.append(("batch", trainer.state.epoch, trainer.state.batch_in_epoch))

    def steps(self):
        return [e[1:] for e in self.events if e[0] == "step"]


def test_on_optimizer_step_once_per_step_under_accumulation_with_an_uneven_last_group():
    events = Events()
    # 40 samples, batches of 4: 10 batches per epoch; accumulating 3 makes groups of 3, 3, 3 and 1
    trainer(events, max_epochs=2, accumulate_grad_batches=3).fit(data(), batch_size=4, shuffle=False)
    assert events.steps() == [(epoch, 4 * epoch + i + 1, i + 1, batch) for epoch in range(2) for i, batch in enumerate([3, 6, 9, 10])]
    # after the group's last batch, before that batch's on_train_batch_end
    first_epoch = events.events[:14]
    assert [e[0] for e in first_epoch] == ["batch", "batch", "step", "batch"] * 3 + ["step", "batch"]


def test_on_optimizer_step_stops_with_max_steps():
    events = Events()
    fitted = trainer(events, max_epochs=5, max_steps=6, accumulate_grad_batches=3)
    fitted.fit(data(), batch_size=4, shuffle=False)
    assert [s[1] for s in events.steps()] == [1, 2, 3, 4, 5, 6]
    assert events.steps()[-1] == (1, 6, 2, 6) and fitted.state.global_step == 6
    assert events.events[-1] == ("batch", 1, 6)  # nothing after the last step's batch


def test_listening_is_declared_never_patched_onto_the_instance():
    quiet = [ModelCheckpoint(), JSONLLogger(log_every_n_steps=None), ProgressBar(live=False), LRScheduler(lambda o: None)]
    for callback in quiet + [ModelCheckpoint(every_n_steps=2), JSONLLogger(), ProgressBar(live=True)]:
        assert not [name for name in vars(callback) if name.startswith("on_")], type(callback).__name__
    for callback in quiet:
        assert not callback.listens("on_train_batch_end") and not callback.listens("on_optimizer_step"), callback
    assert ModelCheckpoint().listens("on_epoch_end") and ModelCheckpoint().listens("on_fit_end")
    assert ModelCheckpoint(every_n_steps=2).listens("on_optimizer_step")
    assert ModelCheckpoint(every_n_steps=2).listens("on_train_batch_end")  # the step's save waits for its batch's loss
    assert LRScheduler(lambda o: None, interval="step").listens("on_optimizer_step")
    assert not LRScheduler(lambda o: None, interval="step").listens("on_train_batch_end")
    built = trainer([ModelCheckpoint(dirpath="unused")]).callbacks
    assert not built.listens("on_train_batch_end") and not built.listens("on_optimizer_step")


def test_a_hook_that_does_not_listen_is_never_called(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ModelCheckpoint, "on_train_batch_end", lambda self, trainer, loss: calls.append("batch"))
    monkeypatch.setattr(ModelCheckpoint, "on_optimizer_step", lambda self, trainer: calls.append("step"))

    class NotThisRun(gl.Callback):
        def on_optimizer_step(self, trainer):
            calls.append("not this run")

        def listens(self, hook):
            return hook != "on_optimizer_step" and super().listens(hook)

    trainer([ModelCheckpoint(), NotThisRun()], max_epochs=2, run_dir=tmp_path).fit(data(), batch_size=4)
    assert calls == [] and (tmp_path / "checkpoints" / "epoch-1-step-20.ckpt").is_file()


class Stream(IterableDataset):
    """40 samples in a loader without a length: the trainer learns where the epoch ends only when it ends."""

    def __iter__(self):
        X, y = data()
        return iter(zip(X, y))


def test_a_step_after_the_last_batch_of_an_unsized_loader(tmp_path):
    # 10 batches per epoch, groups of 4: steps at batches 4 and 8, and one after batch 10 (the group of 2)
    saver = ModelCheckpoint(every_n_steps=3, every_n_epochs=None, keep=None, save_best=False)
    trainer([saver, JSONLLogger(log_every_n_steps=1)], max_epochs=2, accumulate_grad_batches=4, run_dir=tmp_path).fit(
        Stream(), batch_size=4
    )
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*"))
    assert names == ["epoch-0-step-3.ckpt", "epoch-1-step-6.ckpt"]  # saved at the epoch's end
    for name in names:  # never a state inside an accumulation group
        assert checkpoint.load(tmp_path / "checkpoints" / name)["progress"]["batch_in_epoch"] == 0
    steps = [(r["epoch"], r["global_step"]) for r in read_jsonl(tmp_path / "metrics.jsonl") if r["type"] == "step"]
    assert steps == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5), (1, 6)]


def test_priority_orders_the_callbacks():
    seen = []

    class Late(gl.Callback):
        priority = 5

        def on_fit_start(self, trainer):
            seen.append("late")

    class Early(gl.Callback):
        priority = -5

        def on_fit_start(self, trainer):
            seen.append("early")

    trainer([Late(), Early()], max_epochs=1).fit(data(), batch_size=40)
    assert seen == ["early", "late"]
    assert not hasattr(gl.Callback, "order")  # one word, one meaning: "order" is the epoch's data order


def test_a_misspelled_hook_is_an_error_with_a_suggestion():
    class Typo(gl.Callback):
        def on_optimizer_stpe(self, trainer):
            pass

    with pytest.raises(
        TypeError,
        match=r"Typo.on_optimizer_stpe is not a gradloop hook \(did you mean "
        r"'on_optimizer_step'\?\); hooks are: on_fit_start, ",
    ):
        trainer([Typo()])
