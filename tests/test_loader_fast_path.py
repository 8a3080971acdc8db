"""A user's plain DataLoader over in-memory tensors is batched by index, with the numbers of `for x, y in loader:`."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset, TensorDataset, WeightedRandomSampler, default_collate

import gradloop as gl
from gradloop.data.batches import LoaderBatches, make_batches
from gradloop.data.fast_loader import IndexedLoaderBatches
from helpers import same_weights, straight_and_resumed

CPU = torch.device("cpu")
X = torch.randn(53, 6, generator=torch.Generator().manual_seed(1))
Y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long()


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))  # dropout: the global RNG matters


LOADERS = {
    "shuffle": lambda: DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True),
    "in order": lambda: DataLoader(TensorDataset(X, Y), batch_size=8),
    "drop_last": lambda: DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True, drop_last=True),
    "generator": lambda: DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)),
    "own sampler generator": lambda: DataLoader(
        TensorDataset(X, Y), batch_size=8, sampler=RandomSampler(range(53), generator=torch.Generator().manual_seed(9))
    ),
    "nested Subset": lambda: DataLoader(
        Subset(Subset(TensorDataset(X, Y), list(range(50, 2, -1))), [7, 3, 3, 40, *range(20)]), batch_size=5, shuffle=True
    ),
    "persistent workers": lambda: DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True, num_workers=1, persistent_workers=True),
}


def hand_written(make_loader, epochs=2, make_val=None):
    model, loader = make_model(), make_loader()
    val_loader = make_val() if make_val else None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
        if val_loader is not None:
            model.eval()
            with torch.no_grad():
                for xb, yb in val_loader:
                    loss_fn(model(xb), yb)
    return model


def with_gradloop(make_loader, epochs=2, make_val=None):
    model = make_model()
    trainer = gl.Trainer(model, lr=1e-2, max_epochs=epochs, metrics=[], default_callbacks=False)
    trainer.fit(make_loader(), val=make_val() if make_val else None)
    return model


@pytest.mark.parametrize("case", list(LOADERS))
def test_fast_path_trains_bit_identically_to_the_hand_written_loop(case):
    make_loader = LOADERS[case]
    assert isinstance(make_batches(make_loader(), 8, True, CPU, "train"), IndexedLoaderBatches)
    assert same_weights(hand_written(make_loader), with_gradloop(make_loader))


def test_validation_loaders_draw_what_the_hand_written_loop_draws():
    make_val = lambda: DataLoader(TensorDataset(X[:20], Y[:20]), batch_size=6)  # noqa: E731
    assert same_weights(hand_written(LOADERS["shuffle"], make_val=make_val), with_gradloop(LOADERS["shuffle"], make_val=make_val))


def test_batches_are_what_default_collate_makes():
    loader = DataLoader(TensorDataset(X, Y), batch_size=8)
    batches = make_batches(loader, 8, True, CPU, "train")
    for mine, theirs in zip(batches.iterate(batches.new_order()), loader):
        assert type(mine) is type(theirs) and all(torch.equal(a, b) for a, b in zip(mine, theirs))


class Twice(TensorDataset):
    pass


@pytest.mark.parametrize(
    "make_loader",
    [
        lambda: DataLoader(TensorDataset(X, Y), batch_size=8, collate_fn=lambda items: default_collate(items)),
        lambda: DataLoader(TensorDataset(X, Y), batch_size=8, sampler=WeightedRandomSampler(torch.ones(53), 53)),
        lambda: DataLoader(TensorDataset(X, Y), batch_size=8, sampler=RandomSampler(range(53), replacement=True)),
        lambda: DataLoader(TensorDataset(X, Y), batch_size=8, sampler=RandomSampler(range(53), num_samples=20)),
        lambda: DataLoader(Twice(X, Y), batch_size=8),
        lambda: DataLoader(TensorDataset(X, Y), batch_size=None),
    ],
    ids=["collate_fn", "weighted sampler", "replacement", "num_samples", "dataset subclass", "no batching"],
)
def test_other_loaders_are_iterated_as_given(make_loader):
    assert type(make_batches(make_loader(), 8, True, CPU, "train")) is LoaderBatches


def test_under_torchrun_a_user_loader_is_iterated_as_given(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert type(make_batches(LOADERS["shuffle"](), 8, True, CPU, "train")) is LoaderBatches


@pytest.mark.parametrize("case", ["shuffle", "generator", "own sampler generator", "nested Subset"])
@pytest.mark.parametrize("stop_step", [4, 7, 11])  # mid-epoch, an epoch's end (7 batches), mid-epoch later
def test_mid_epoch_resume_is_bit_identical_and_skips_nothing_by_replay(tmp_path, monkeypatch, case, stop_step):
    def make_trainer(model, run_dir, callbacks):
        return gl.Trainer(model, lr=1e-2, max_epochs=3, metrics=[], seed=3, run_dir=run_dir, callbacks=callbacks, default_callbacks=False)

    fetched = []
    monkeypatch.setattr(TensorDataset, "__getitem__", lambda self, i: fetched.append(i) or tuple(t[i] for t in self.tensors))
    straight, resumed, _ = straight_and_resumed(make_model, make_trainer, LOADERS[case], stop_step, tmp_path)
    assert same_weights(straight, resumed)
    assert fetched == []  # no batch came from the loader: none was replayed to reach the resumed position


def test_the_fast_path_beats_the_loader_it_replaces():
    """Not a benchmark (bench/loop_overhead.py is): gathering by index must not cost more than per-sample collation."""
    import time

    data = TensorDataset(torch.randn(4000, 32), torch.randint(0, 3, (4000,)))
    loader = DataLoader(data, batch_size=32, shuffle=True)
    batches = make_batches(loader, 32, True, CPU, "train")
    started = time.perf_counter()
    for _ in batches.iterate(batches.new_order()):
        pass
    fast = time.perf_counter() - started
    started = time.perf_counter()
    for _ in loader:
        pass
    assert fast < time.perf_counter() - started


def test_a_loader_iterated_as_given_replays_its_own_generator_on_resume(tmp_path):
    """Off the fast path (a collate_fn of its own) a resume replays the epoch: from the generators' states at its start."""

    def make_loader():
        generator = torch.Generator().manual_seed(5)
        return DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True, generator=generator, collate_fn=lambda b: default_collate(b))

    def make_trainer(model, run_dir, callbacks):
        return gl.Trainer(model, lr=1e-2, max_epochs=3, metrics=[], seed=3, run_dir=run_dir, callbacks=callbacks, default_callbacks=False)

    straight, resumed, _ = straight_and_resumed(make_model, make_trainer, make_loader, 10, tmp_path)
    assert same_weights(straight, resumed)
