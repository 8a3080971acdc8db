"""ModelCheckpoint: which files exist when, that best.ckpt really is the best, step-based saving,
retention that never drops the last good checkpoint, and no non-finite state ever written."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.callbacks.checkpoint import ModelCheckpoint
from gradloop.persistence import checkpoint

STEPS_PER_EPOCH = 4  # 32 samples, batch size 8


def data(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def make_trainer(run_dir: Path, *callbacks: gl.Callback, max_epochs: int = 5, **options) -> gl.Trainer:
    torch.manual_seed(0)
    return gl.Trainer(
        nn.Linear(4, 3), callbacks=list(callbacks), max_epochs=max_epochs, run_dir=run_dir, device="cpu", default_callbacks=False, **options
    )


def files(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "checkpoints").iterdir()}


def periodic(run_dir: Path) -> set[str]:
    return {n for n in files(run_dir) if n.startswith("epoch-")}


class Scripted(gl.Callback):
    """Replaces the epoch's val_loss with a scripted value (runs before ModelCheckpoint)."""

    priority = 15

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_epoch_end(self, trainer, logs) -> None:
        logs["val_loss"] = self.values[trainer.state.epoch]


class Spy(gl.Callback):
    """Runs after ModelCheckpoint: records the weights and the checkpoint files after each epoch."""

    priority = 30

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.files: list[set[str]] = []

    def on_epoch_end(self, trainer, logs) -> None:
        self.weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        self.files.append(periodic(trainer.run_dir))


class Poison(gl.Callback):
    """Makes the weights NaN at the end of epoch `at` (before ModelCheckpoint sees them)."""

    priority = 5

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch_end(self, trainer, logs) -> None:
        if trainer.state.epoch == self.at:
            with torch.no_grad():
                trainer.model.weight.fill_(math.nan)


def test_keeps_k_periodic_files_plus_best_and_last(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, ModelCheckpoint(keep=2))
    trainer.fit(data(), val=data(16, seed=1), batch_size=8)
    assert files(tmp_path) == {"best.ckpt", "last.ckpt", "epoch-3-step-16.ckpt", "epoch-4-step-20.ckpt"}
    last = checkpoint.load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["progress"]["global_step"] == 20 and len(last["history"]["epochs"]) == 5
    # written once, linked: same moment, same bytes
    assert os.path.samefile(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "epoch-4-step-20.ckpt")


def test_best_is_the_best(tmp_path: Path) -> None:
    values = [3.0, 1.0, 2.0, 0.5, 4.0, 0.7]
    spy = Spy()
    trainer = make_trainer(tmp_path, Scripted(values), ModelCheckpoint(keep=1), spy, max_epochs=6)
    trainer.fit(data(), val=data(16, seed=1), batch_size=8)
    best = checkpoint.load(tmp_path / "checkpoints" / "best.ckpt")
    assert [e["val_loss"] for e in best["history"]["epochs"]] == values[:4]  # written at epoch 3
    assert best["callbacks"]["ModelCheckpoint"]["best"] == 0.5
    assert all(torch.equal(best["model"][k], v) for k, v in spy.weights[3].items())
    assert not all(torch.equal(best["model"][k], v) for k, v in spy.weights[5].items())


def test_mode_max_and_a_monitor_that_is_not_logged(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, ModelCheckpoint(monitor="val_accuracy", keep=0), max_epochs=3, metrics=["accuracy"])
    trainer.fit(data(), val=data(16, seed=1), batch_size=8)
    best = checkpoint.load(tmp_path / "checkpoints" / "best.ckpt")
    accuracies = trainer.history["val_accuracy"]
    assert best["callbacks"]["ModelCheckpoint"]["best"] == max(accuracies)
    assert len(best["history"]["epochs"]) == accuracies.index(max(accuracies)) + 1
    assert files(tmp_path) == {"best.ckpt", "last.ckpt"}  # keep=0: no periodic files
    with pytest.raises(ValueError, match=r"ModelCheckpoint monitors 'val_f1', which is not logged; available: loss"):
        make_trainer(tmp_path, ModelCheckpoint(monitor="val_f1")).fit(data(), val=data(16, seed=1), batch_size=8)


def test_every_n_steps(tmp_path: Path) -> None:
    mc = ModelCheckpoint(every_n_steps=3, every_n_epochs=None, keep=None, save_best=False)
    trainer = make_trainer(tmp_path, mc, max_epochs=3, accumulate_grad_batches=2)  # 2 steps per epoch
    trainer.fit(data(), batch_size=8)
    assert periodic(tmp_path) == {"epoch-1-step-3.ckpt", "epoch-2-step-6.ckpt"}
    mid = checkpoint.load(tmp_path / "checkpoints" / "epoch-1-step-3.ckpt")
    assert mid["progress"]["global_step"] == 3 and mid["progress"]["batch_in_epoch"] == 2  # right after the step
    assert files(tmp_path) == periodic(tmp_path) | {"last.ckpt"}
    assert checkpoint.load(tmp_path / "checkpoints" / "last.ckpt")["progress"]["epoch"] == 3  # final state, at fit end


def test_without_step_saving_the_loop_skips_the_batch_hook(tmp_path: Path) -> None:
    assert not gl.Trainer(nn.Linear(4, 3), callbacks=[ModelCheckpoint()], default_callbacks=False).callbacks.listens("on_train_batch_end")
    assert gl.Trainer(nn.Linear(4, 3), callbacks=[ModelCheckpoint(every_n_steps=2)], default_callbacks=False).callbacks.listens(
        "on_train_batch_end"
    )


def test_keep_1_never_has_fewer_than_one(tmp_path: Path) -> None:
    spy = Spy()
    trainer = make_trainer(tmp_path, ModelCheckpoint(keep=1), spy, max_epochs=4)
    trainer.fit(data(), val=data(16, seed=1), batch_size=8)
    assert spy.files == [{f"epoch-{e}-step-{4 * (e + 1)}.ckpt"} for e in range(4)]


def test_a_failed_save_deletes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer(tmp_path, ModelCheckpoint(keep=1), max_epochs=4)
    real = trainer.save_checkpoint

    def failing(path):
        if trainer.state.epoch == 2:
            raise checkpoint.CheckpointWriteError(f"cannot write {str(path)!r}: No space left on device", 28)
        return real(path)

    monkeypatch.setattr(trainer, "save_checkpoint", failing)
    with pytest.raises(checkpoint.CheckpointWriteError, match="No space left"):
        trainer.fit(data(), val=data(16, seed=1), batch_size=8)
    assert periodic(tmp_path) == {"epoch-1-step-8.ckpt"}
    checkpoint.verify(tmp_path / "checkpoints" / "epoch-1-step-8.ckpt")


def test_non_finite_weights_are_never_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = make_trainer(tmp_path, Poison(at=2), ModelCheckpoint(keep=5), max_epochs=4)
    trainer.fit(data(), val=data(16, seed=1), batch_size=8)
    assert periodic(tmp_path) == {"epoch-0-step-4.ckpt", "epoch-1-step-8.ckpt"}
    last = checkpoint.load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["progress"]["global_step"] == 8 and torch.isfinite(last["model"]["weight"]).all()
    err = capsys.readouterr().err
    assert "did not save at epoch 2, step 12: the weights are not finite" in err
    assert "did not save at epoch 3, step 16: the epoch's loss is nan" in err


def test_state_dict_round_trip_and_resume(tmp_path: Path) -> None:
    values = [3.0, 1.0, 2.0, 0.5, 4.0, 0.7]
    first = ModelCheckpoint(keep=2)
    make_trainer(tmp_path, Scripted(values), first, max_epochs=3).fit(data(), val=data(16, seed=1), batch_size=8)
    state = first.state_dict()
    assert state == {
        "monitor": "val_loss",
        "mode": "min",
        "best": 1.0,
        "best_path": "best.ckpt",
        "kept": ["epoch-1-step-8.ckpt", "epoch-2-step-12.ckpt"],
        "saved": [3, 12, 0],
    }
    copy = ModelCheckpoint(keep=2)
    copy.load_state_dict(state)
    assert copy.state_dict() == state

    (tmp_path / "checkpoints" / "epoch-9-step-99.ckpt").write_bytes(b"left over from some other run")
    resumed = ModelCheckpoint(keep=2)
    trainer = make_trainer(tmp_path, Scripted(values), resumed, max_epochs=6)
    trainer.fit(data(), val=data(16, seed=1), batch_size=8, resume="last")
    assert files(tmp_path) == {"best.ckpt", "last.ckpt", "epoch-4-step-20.ckpt", "epoch-5-step-24.ckpt"}
    assert resumed.best == 0.5 and resumed.kept == ["epoch-4-step-20.ckpt", "epoch-5-step-24.ckpt"]
    best = checkpoint.load(tmp_path / "checkpoints" / "best.ckpt")
    assert len(best["history"]["epochs"]) == 4


def test_dirpath_and_bad_arguments(tmp_path: Path) -> None:
    make_trainer(None, ModelCheckpoint(dirpath=tmp_path / "here", keep=1), max_epochs=1).fit(data(), batch_size=8)
    assert {p.name for p in (tmp_path / "here").iterdir()} == {"best.ckpt", "last.ckpt", "epoch-0-step-4.ckpt"}
    with pytest.raises(ValueError, match="ModelCheckpoint needs a place to write"):
        make_trainer(None, ModelCheckpoint(), max_epochs=1).fit(data(), batch_size=8)
    for bad, match in [
        ({"keep": -1}, "keep must be an integer >= 0 or None"),
        ({"every_n_steps": 0}, "every_n_steps must be a positive integer or None"),
        ({"every_n_epochs": 1.5}, "every_n_epochs must be a positive integer or None"),
        ({"mode": "best"}, "mode must be 'auto', 'min' or 'max'"),
    ]:
        with pytest.raises(ValueError, match=match):
            ModelCheckpoint(**bad)
    with pytest.raises(TypeError, match="monitor must be the name"):
        ModelCheckpoint(monitor=None)
