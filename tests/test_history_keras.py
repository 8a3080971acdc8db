"""Keras's `History` attributes: `history.history`, `history.params`, `history.epoch`."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

import gradloop as gl

pd = pytest.importorskip("pandas")


def data(n: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    return X, (X[:, 0] > 0).long()


def trainer(max_epochs: int, **options) -> gl.Trainer:
    torch.manual_seed(0)
    options.setdefault("default_callbacks", False)
    return gl.Trainer(nn.Linear(4, 2), metrics=["accuracy"], max_epochs=max_epochs, **options)


def test_a_dataframe_of_history_history_has_one_row_per_epoch_with_keras_columns() -> None:
    history = trainer(3).fit(data(), val=data(20, 1), batch_size=16)
    frame = pd.DataFrame(history.history)
    assert len(frame) == 3
    assert list(frame.columns) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"]
    assert frame["val_loss"].tolist() == history["val_loss"] and frame["lr"].tolist() == [1e-3] * 3
    assert history.history == dict(history)  # the Mapping is unchanged: the same lists
    history.history["loss"].append(0.0)  # a new dict at each read: the History itself is not changed
    assert len(history["loss"]) == 3


def test_params_and_epoch() -> None:
    history = trainer(3).fit(data(), batch_size=16)
    assert history.params == {"verbose": 0, "epochs": 3, "steps": math.ceil(50 / 16)}
    assert history.epoch == [0, 1, 2]
    line = trainer(1, callbacks=[gl.ProgressBar(stream=io.StringIO(), live=False)]).fit(data(), batch_size=16)
    live = trainer(1, callbacks=[gl.ProgressBar(stream=io.StringIO(), live=True)]).fit(data(), batch_size=16)
    assert line.params["verbose"] == 2 and live.params["verbose"] == 1  # Keras: 2 one line per epoch, 1 a bar


class Stream(IterableDataset):
    def __iter__(self):
        X, y = data()
        return iter(zip(X, y))


def test_an_unsized_loader_has_no_steps() -> None:
    history = trainer(2).fit(DataLoader(Stream(), batch_size=16))
    assert history.params["steps"] is None and history.epoch == [0, 1]


def test_after_a_resume_the_history_covers_every_epoch(tmp_path: Path) -> None:
    trainer(2, run_dir=tmp_path, default_callbacks=True).fit(data(), batch_size=16)
    resumed = trainer(4, run_dir=tmp_path, default_callbacks=True).fit(data(), batch_size=16, resume="last")
    assert resumed.epoch == [0, 1, 2, 3]
    assert resumed.params["epochs"] == 4 and len(pd.DataFrame(resumed.history)) == 4
    assert set(resumed.state_dict()) == {"epochs"}  # what a checkpoint holds is unchanged
