"""Details the contract fixes that the other test files do not cover on their own."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import gradloop as gl
from gradloop.persistence.checkpoint import CheckpointError, load

X = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


def model():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


class Augmenting(Dataset):
    """Draws from the global RNG in __getitem__, as random augmentation does."""

    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return X[i] + 0.1 * torch.randn(6), Y[i]


def test_a_random_augmenting_dataset_gives_the_numbers_of_its_hand_written_twin():
    torch.manual_seed(0)
    base = model()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(1)
    gl.Trainer(ours, lr=1e-2, max_epochs=2, default_callbacks=False).fit(Augmenting(), val=Augmenting(), batch_size=16)
    after_ours = torch.rand(1)
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    for _ in range(2):
        theirs.train()
        for xb, yb in DataLoader(Augmenting(), batch_size=16, shuffle=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(theirs(xb), yb).backward()
            optimizer.step()
        theirs.eval()
        with torch.no_grad():
            for xb, _ in DataLoader(Augmenting(), batch_size=16):
                theirs(xb)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert torch.equal(after_ours, torch.rand(1))


def test_metrics_default_to_accuracy_for_classification_and_to_none_otherwise():
    history = gl.Trainer(model(), max_epochs=1, default_callbacks=False).fit((X, Y), val=(X, Y))
    assert {"accuracy", "val_accuracy"} <= set(history)
    regression = nn.Linear(6, 1)
    history = gl.Trainer(regression, loss="mse", max_epochs=1, default_callbacks=False).fit((X, X[:, :1]))
    assert set(history) == {"loss", "lr", "time"}


def test_a_callback_that_stops_training_is_the_stop_reason():
    class Stop(gl.Callback):
        def on_epoch_end(self, trainer, logs):
            trainer.should_stop = True

    trainer = gl.Trainer(model(), max_epochs=5, callbacks=[Stop()], default_callbacks=False)
    history = trainer.fit((X, Y))
    assert len(history.epochs) == 1 and trainer.stop_reason == "stopped by a callback"


def test_the_seed_is_recorded_in_checkpoints(tmp_path):
    gl.Trainer(model(), max_epochs=1, seed=11, run_dir=tmp_path / "run").fit((X, Y))
    assert load(tmp_path / "run" / "checkpoints" / "last.ckpt")["settings"]["seed"] == 11


def test_argument_types_are_checked_with_clear_messages():
    gl.Trainer(model(), callbacks=gl.TerminateOnNaN(), default_callbacks=False)  # one callback, not a list: fine
    with pytest.raises(TypeError, match="run_dir must be a path"):
        gl.Trainer(model(), run_dir=3)
    trainer = gl.Trainer(model(), max_epochs=1, default_callbacks=False)
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        trainer.fit((X, Y), shuffle="yes")
    with pytest.raises(TypeError, match="resume must be None, 'last' or a checkpoint path"):
        trainer.fit((X, Y), resume=3)


def test_non_finite_final_weights_are_not_exported(tmp_path, capsys):
    class Explode(gl.Callback):
        def on_epoch_end(self, trainer, logs):
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    gl.Trainer(model(), max_epochs=1, run_dir=tmp_path / "run", callbacks=[Explode()]).fit((X, Y))
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert "not finite" in capsys.readouterr().err


def test_loading_a_checkpoint_of_another_optimizer_is_one_clear_error(tmp_path):
    trainer = gl.Trainer(model(), optimizer="adam", max_epochs=1, default_callbacks=False)
    trainer.fit((X, Y))
    trainer.save_checkpoint(tmp_path / "adam.ckpt")
    other = gl.Trainer(model(), optimizer="sgd", lr=0.1, default_callbacks=False)
    with pytest.raises(CheckpointError, match="Adam optimizer; this trainer uses SGD"):
        other.load_checkpoint(tmp_path / "adam.ckpt")


def test_doctor_reports_data_it_cannot_use_with_exit_1(tmp_path):
    np.savez(tmp_path / "empty.npz", X=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64))
    (tmp_path / "c.toml").write_text('[data]\npath = "empty.npz"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gradloop", "doctor", "c.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1, result.stderr
    assert "FAIL" in result.stdout and "no samples" in result.stdout
