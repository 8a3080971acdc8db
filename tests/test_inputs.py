"""Every input kind trains; batch sizes, the last partial batch, max_steps and the state counters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradloop as gl
from helpers import PairDataset

FEATURES, CLASSES = 4, 3
N, BATCH = 50, 16  # 16, 16, 16, 2


def classification(n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, FEATURES, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()  # learnable labels in 0..2
    return X, y


class BatchSizes(gl.Callback):
    """Records the batch sizes the model saw in training (through a forward hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.sizes: list[int] = []
        model.register_forward_hook(lambda m, i, o: self.sizes.append(i[0].shape[0]) if m.training else None)


class Counters(gl.Callback):
    def __init__(self) -> None:
        self.starts: list[tuple[int, int, int]] = []
        self.batches: list[tuple[int, int, int]] = []
        self.ends: list[tuple[int, int, int]] = []

    @staticmethod
    def read(trainer):
        s = trainer.state
        return (s.epoch, s.global_step, s.step_in_epoch)

    def on_epoch_start(self, trainer):
        self.starts.append(self.read(trainer))

    def on_train_batch_end(self, trainer, loss):
        self.batches.append(self.read(trainer))

    def on_epoch_end(self, trainer, logs):
        self.ends.append(self.read(trainer))


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def trainer_for(model, **kwargs):
    kwargs.setdefault("optimizer", "adam")
    kwargs.setdefault("lr", 0.02)
    return gl.Trainer(model, loss="cross_entropy", metrics=["accuracy"], default_callbacks=False, **kwargs)


def inputs_of(kind: str, X: torch.Tensor, y: torch.Tensor):
    return {
        "tensors": (X, y),
        "tensors-list-pair": [X, y],
        "numpy": (X.double().numpy(), y.numpy().astype(np.int32)),
        "lists": (X.tolist(), y.tolist()),
        "tensordataset": TensorDataset(X, y),
        "dataset": PairDataset(X, y),
    }[kind]


@pytest.mark.parametrize("kind", ["tensors", "tensors-list-pair", "numpy", "lists", "tensordataset", "dataset"])
def test_each_input_kind_trains(kind):
    X, y = classification(200)
    model = make_model()
    before = copy.deepcopy(model.state_dict())
    sizes = BatchSizes(model)
    trainer = trainer_for(model, max_epochs=8, callbacks=[sizes])
    history = trainer.fit(inputs_of(kind, X, y), val=inputs_of(kind, *classification(40, seed=1)), batch_size=32)
    assert len(history["loss"]) == len(history["val_loss"]) == 8
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["val_accuracy"][-1] > 0.6
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sizes.sizes[:7] == [32] * 6 + [8]  # 200 = 6 * 32 + 8
    assert len(sizes.sizes) == 8 * 7
    assert trainer.state.global_step == 8 * 7


def test_numpy_inputs_give_the_same_result_as_tensors():
    """float64 arrays become float32 and integer labels int64: the same run as with tensors."""
    X, y = classification()
    base = make_model()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    trainer_for(a, max_epochs=2).fit((X, y), batch_size=BATCH, shuffle=False)
    trainer_for(b, max_epochs=2).fit((X.double().numpy(), y.numpy()), batch_size=BATCH, shuffle=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_dataloader_is_used_as_given():
    X, y = classification()
    model = make_model()
    sizes = BatchSizes(model)
    loader = DataLoader(TensorDataset(X, y), batch_size=8, shuffle=False)
    trainer = trainer_for(model, max_epochs=2, callbacks=[sizes])
    history = trainer.fit(loader, val=DataLoader(TensorDataset(*classification(20, seed=1)), batch_size=5), batch_size=64)
    assert sizes.sizes == ([8] * 6 + [2]) * 2  # the loader's batch size, not fit's batch_size=64
    assert trainer.state.global_step == 14
    assert len(history["val_loss"]) == 2


def test_dataloader_with_drop_last_is_honoured():
    X, y = classification()
    model = make_model()
    sizes = BatchSizes(model)
    trainer = trainer_for(model, max_epochs=1, callbacks=[sizes])
    trainer.fit(DataLoader(TensorDataset(X, y), batch_size=16, drop_last=True))
    assert sizes.sizes == [16, 16, 16]


def test_dataloader_with_extra_items_per_batch():
    """Items (x, y, w): the first is the input, the second the target."""
    X, y = classification()
    loader = DataLoader(TensorDataset(X, y, torch.rand(N)), batch_size=BATCH)
    history = trainer_for(make_model(), max_epochs=2).fit(loader)
    assert len(history["loss"]) == 2


def test_dataset_is_batched_with_fit_batch_size():
    X, y = classification()
    model = make_model()
    sizes = BatchSizes(model)
    trainer_for(model, max_epochs=1, callbacks=[sizes]).fit(PairDataset(X, y), batch_size=BATCH, shuffle=True)
    assert sizes.sizes == [16, 16, 16, 2]


@pytest.mark.parametrize("shuffle", [False, True])
def test_last_partial_batch_is_kept(shuffle):
    X, y = classification()
    model = make_model()
    sizes = BatchSizes(model)
    seen_rows: list[torch.Tensor] = []
    model[0].register_forward_hook(lambda m, i, o: seen_rows.append(i[0].detach().clone()) if m.training else None)
    trainer_for(model, max_epochs=1, callbacks=[sizes]).fit((X, y), batch_size=BATCH, shuffle=shuffle)
    assert sizes.sizes == [16, 16, 16, 2]
    # every sample seen exactly once per epoch
    seen = torch.cat(seen_rows)
    assert seen.shape == X.shape

    def key(t):
        return sorted(map(tuple, t.tolist()))

    assert key(seen) == key(X)
    if not shuffle:
        assert torch.equal(seen, X)


def test_shuffle_changes_the_order_every_epoch():
    X, y = classification()
    model = make_model()
    firsts: list[torch.Tensor] = []
    model[0].register_forward_hook(lambda m, i, o: firsts.append(i[0][:4].clone()) if m.training else None)
    trainer_for(model, max_epochs=2).fit((X, y), batch_size=BATCH, shuffle=True)
    assert not torch.equal(firsts[0], firsts[4])  # first batch of epoch 0 vs of epoch 1
    assert not torch.equal(firsts[0], X[:4])


# ----------------------------------------------------------------------------- max_steps
def test_max_steps_stops_mid_epoch():
    X, y = classification()
    counters = Counters()
    model = make_model()
    sizes = BatchSizes(model)
    trainer = trainer_for(model, max_epochs=10, max_steps=6, callbacks=[counters, sizes])
    history = trainer.fit((X, y), val=classification(20, seed=1), batch_size=BATCH)  # 4 steps per epoch
    assert trainer.stop_reason == "max_steps"
    assert trainer.state.global_step == 6
    assert len(sizes.sizes) == 6
    assert len(history["loss"]) == 2  # the interrupted epoch is logged too
    assert len(history["val_loss"]) == 2
    assert counters.batches[-1] == (1, 6, 2)


def test_max_steps_within_the_first_epoch():
    X, y = classification()
    trainer = trainer_for(make_model(), max_epochs=3, max_steps=1)
    history = trainer.fit((X, y), batch_size=BATCH)
    assert trainer.stop_reason == "max_steps"
    assert trainer.state.global_step == 1
    assert len(history["loss"]) == 1


def test_max_epochs_is_the_stop_reason_otherwise():
    X, y = classification()
    trainer = trainer_for(make_model(), max_epochs=3, max_steps=100)
    history = trainer.fit((X, y), batch_size=BATCH)
    assert trainer.stop_reason == "max_epochs"
    assert len(history["loss"]) == 3
    assert trainer.state.global_step == 12


def test_max_steps_counts_optimizer_steps_under_accumulation():
    X, y = classification()
    model = make_model()
    sizes = BatchSizes(model)
    trainer = trainer_for(model, max_epochs=10, max_steps=3, accumulate_grad_batches=2, callbacks=[sizes])
    trainer.fit((X, y), batch_size=BATCH)  # 4 batches = 2 steps per epoch
    assert trainer.stop_reason == "max_steps"
    assert trainer.state.global_step == 3
    assert len(sizes.sizes) == 6


# ----------------------------------------------------------------------------- state counters
def test_state_counters_without_accumulation():
    X, y = classification()
    counters = Counters()
    trainer = trainer_for(make_model(), max_epochs=3, callbacks=[counters])
    history = trainer.fit((X, y), batch_size=BATCH)
    assert counters.starts == [(0, 0, 0), (1, 4, 0), (2, 8, 0)]
    assert counters.batches == [(e, 4 * e + j, j) for e in range(3) for j in range(1, 5)]
    assert counters.ends == [(0, 4, 4), (1, 8, 4), (2, 12, 4)]
    assert trainer.state.global_step == 12
    assert trainer.state.epoch == 3 == len(history["loss"])


def test_state_counters_with_accumulation():
    """4 batches per epoch, k=3: optimizer steps after batch 3 and after batch 4 (the short last group)."""
    X, y = classification()
    counters = Counters()
    trainer = trainer_for(make_model(), max_epochs=2, accumulate_grad_batches=3, callbacks=[counters])
    trainer.fit((X, y), batch_size=BATCH)
    assert counters.starts == [(0, 0, 0), (1, 2, 0)]
    assert counters.batches == [(0, 0, 0), (0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 2, 0), (1, 2, 0), (1, 3, 1), (1, 4, 2)]
    assert counters.ends == [(0, 2, 2), (1, 4, 2)]
    assert trainer.state.global_step == 4


def test_fit_twice_starts_over():
    """A second fit (no resume) trains max_epochs more on the same model and returns a fresh history."""
    X, y = classification()
    model = make_model()
    trainer = trainer_for(model, max_epochs=2)
    trainer.fit((X, y), batch_size=BATCH)
    after_first = copy.deepcopy(model.state_dict())
    history = trainer.fit((X, y), batch_size=BATCH)
    assert len(history["loss"]) == 2
    assert any(not torch.equal(after_first[k], v) for k, v in model.state_dict().items())


def test_model_is_trained_in_place_and_history_returned():
    X, y = classification()
    model = make_model()
    trainer = trainer_for(model, max_epochs=1)
    history = trainer.fit((X, y), batch_size=BATCH)
    assert trainer.model is model
    assert isinstance(history, gl.History)
