"""Trainer.fit against the loop that every tutorial teaches, written out by hand.

Same initial weights (a deepcopy), same global RNG seed before both runs, same batch order: the
weights must be bit-identical (torch.equal) and the global RNG must be left at the same point.
With seed=None gradloop's in-memory batcher draws from the global torch RNG exactly as
`DataLoader(TensorDataset(X, y), batch_size, shuffle)` does, so the twin uses a DataLoader.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradloop as gl

N, N_VAL, FEATURES, CLASSES = 50, 21, 6, 3  # 50 = 6 * 8 + 2: the last batch is partial
BATCH = 8


def make_data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)  # a private generator: data creation leaves the global RNG alone
    return torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def make_model(dropout: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(FEATURES, 16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(0.3))
    layers.append(nn.Linear(16, CLASSES))
    return nn.Sequential(*layers)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs: max |diff| {(sa[name] - sb[name]).abs().max()}"


def assert_close_weights(a: nn.Module, b: nn.Module, **tol) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], **tol, msg=lambda m, name=name: f"{name}: {m}")


def assert_weights_differ(a: nn.Module, b: nn.Module) -> None:
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def hand_loop(model, optimizer, train, *, epochs, batch_size, shuffle, val=None, clip=None, accumulate=1):
    """The tutorial loop. Accumulation divides each batch's loss by the size of its group; a group
    whose batches differ in size weights each batch by its share of the group's samples."""
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=shuffle)
    num_batches = len(loader)
    num_samples = len(train[0])
    sizes = [min(batch_size, num_samples - b * batch_size) for b in range(num_batches)]
    for _ in range(epochs):
        model.train()
        for i, (xb, yb) in enumerate(loader):
            start = i - i % accumulate
            group = min(accumulate, num_batches - start)
            if i == start:
                optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            group_sizes = sizes[start : start + group]
            if len(set(group_sizes)) > 1:
                (loss * (sizes[i] / sum(group_sizes))).backward()
            else:
                (loss / group if group > 1 else loss).backward()
            if i + 1 == start + group:
                if clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
        if val is not None:
            model.eval()
            with torch.no_grad():
                for xb, yb in DataLoader(TensorDataset(*val), batch_size=batch_size, shuffle=False):
                    loss_fn(model(xb), yb)
    return model


def gl_fit(model, optimizer, train, *, epochs, batch_size, shuffle, val=None, lr=None, **kwargs):
    trainer = gl.Trainer(
        model, optimizer=optimizer, lr=lr, loss="cross_entropy", metrics=["accuracy"], max_epochs=epochs, default_callbacks=False, **kwargs
    )
    history = trainer.fit(train, val=val, batch_size=batch_size, shuffle=shuffle)
    return trainer, history


def same_impl(optimizer: torch.optim.Optimizer) -> dict:
    """A name may pick torch's foreach/fused implementation (the contract allows it): the twin uses
    the same one, with torch's defaults for everything else."""
    return {k: optimizer.defaults[k] for k in ("foreach", "fused") if k in optimizer.defaults}


# optimizer specs: (spec for gradloop given its model, lr for gradloop, twin optimizer given its model
# and the optimizer gradloop built)
OPTIMIZERS = {
    "sgd-momentum-instance": (
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
        None,
        lambda m, o: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    ),
    "sgd-momentum-factory": (
        lambda m: lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        None,
        lambda m, o: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
    ),
    "sgd-name": (lambda m: "sgd", 0.05, lambda m, o: torch.optim.SGD(m.parameters(), lr=0.05, **same_impl(o))),
    "adam-name": (lambda m: "adam", 0.01, lambda m, o: torch.optim.Adam(m.parameters(), lr=0.01, **same_impl(o))),
    "adam-instance": (lambda m: torch.optim.Adam(m.parameters(), lr=0.01), None, lambda m, o: torch.optim.Adam(m.parameters(), lr=0.01)),
    # A name must also give the very numbers of torch's default implementation (the tutorial's).
    "adam-name-vs-default": (lambda m: "adam", 0.01, lambda m, o: torch.optim.Adam(m.parameters(), lr=0.01)),
    "sgd-name-vs-default": (lambda m: "sgd", 0.05, lambda m, o: torch.optim.SGD(m.parameters(), lr=0.05)),
}


def run_pair(opt_key, *, epochs, shuffle, with_val=True, seed=1234, **gl_kwargs):
    spec, lr, twin_opt = OPTIMIZERS[opt_key]
    X, y = make_data()
    val = make_data(N_VAL, seed=1) if with_val else None
    base = make_model(dropout=True)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)

    torch.manual_seed(seed)
    trainer, _ = gl_fit(ours, spec(ours), (X, y), epochs=epochs, batch_size=BATCH, shuffle=shuffle, val=val, lr=lr, **gl_kwargs)
    after_ours = torch.rand(1)

    torch.manual_seed(seed)
    hand_loop(
        theirs,
        twin_opt(theirs, trainer.optimizer),
        (X, y),
        epochs=epochs,
        batch_size=BATCH,
        shuffle=shuffle,
        val=val,
        clip=gl_kwargs.get("grad_clip_norm"),
        accumulate=gl_kwargs.get("accumulate_grad_batches", 1),
    )
    after_theirs = torch.rand(1)
    return base, ours, theirs, after_ours, after_theirs


@pytest.mark.parametrize(
    "name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)]
)
def test_optimizer_by_name_uses_torch_defaults(name, cls):
    model = make_model()
    trainer = gl.Trainer(model, optimizer=name, lr=0.03, default_callbacks=False)
    reference = cls(copy.deepcopy(model).parameters(), lr=0.03)
    assert type(trainer.optimizer) is cls
    ignore = ("foreach", "fused")
    assert {k: v for k, v in trainer.optimizer.defaults.items() if k not in ignore} == {
        k: v for k, v in reference.defaults.items() if k not in ignore
    }
    assert [p for g in trainer.optimizer.param_groups for p in g["params"]] == list(model.parameters())


@pytest.mark.parametrize("epochs", [1, 2])
@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("opt_key", list(OPTIMIZERS))
def test_fit_equals_hand_written_loop(opt_key, shuffle, epochs):
    base, ours, theirs, rng_ours, rng_theirs = run_pair(opt_key, epochs=epochs, shuffle=shuffle)
    assert_weights_differ(ours, base)  # it did train
    assert_same_weights(ours, theirs)
    assert torch.equal(rng_ours, rng_theirs), "fit left the global torch RNG elsewhere than the tutorial loop"


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_fit_equals_hand_written_loop_without_validation(shuffle):
    _, ours, theirs, rng_ours, rng_theirs = run_pair("adam-name", epochs=2, shuffle=shuffle, with_val=False)
    assert_same_weights(ours, theirs)
    assert torch.equal(rng_ours, rng_theirs)


def test_equivalence_depends_on_the_rng_alignment():
    """Sanity check of the test itself: a different seed before the twin gives different weights."""
    X, y = make_data()
    base = make_model(dropout=True)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(1)
    gl_fit(ours, "adam", (X, y), epochs=1, batch_size=BATCH, shuffle=True, lr=0.01)
    torch.manual_seed(2)
    hand_loop(theirs, torch.optim.Adam(theirs.parameters(), lr=0.01), (X, y), epochs=1, batch_size=BATCH, shuffle=True)
    assert_weights_differ(ours, theirs)


def test_fit_draws_the_same_random_numbers_as_the_tutorial_loop_in_dropout():
    """Shuffle off, dropout on: only the dropout masks (and loader seeds) use the RNG."""
    _, ours, theirs, rng_ours, rng_theirs = run_pair("sgd-momentum-instance", epochs=2, shuffle=False)
    assert_same_weights(ours, theirs)
    assert torch.equal(rng_ours, rng_theirs)


# ----------------------------------------------------------------------------- gradient clipping
@pytest.mark.parametrize("opt_key", ["sgd-momentum-instance", "adam-name"])
def test_grad_clip_norm_equals_clip_grad_norm_before_step(opt_key):
    base, ours, theirs, rng_ours, rng_theirs = run_pair(opt_key, epochs=2, shuffle=True, grad_clip_norm=0.05)
    assert_same_weights(ours, theirs)
    assert torch.equal(rng_ours, rng_theirs)
    # the clip was active: without it the weights come out differently
    _, unclipped, _, _, _ = run_pair(opt_key, epochs=2, shuffle=True)
    assert_weights_differ(ours, unclipped)


def test_grad_clip_norm_is_logged_as_grad_norm():
    X, y = make_data()
    model = make_model(dropout=False)
    _, history = gl_fit(model, "sgd", (X, y), epochs=2, batch_size=BATCH, shuffle=False, lr=0.05, grad_clip_norm=0.05)
    assert len(history["grad_norm"]) == 2
    assert all(isinstance(v, float) and v > 0 for v in history["grad_norm"])


# ----------------------------------------------------------------------------- gradient accumulation
def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("n", [48, 40, 42], ids=["divisible", "last-group-short", "last-batch-partial"])
def test_accumulation_equals_a_k_times_larger_batch(n, shuffle):
    """k batches of b, accumulated, step like one batch of k*b (48 = 4 groups of 3 batches of 4;
    40 = 10 batches: 3 groups of 3 and a last group of one full batch that steps at epoch end)."""
    X, y = make_data(n)
    base = make_model(dropout=False)
    accumulated, large = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(5)
    t_acc, _ = gl_fit(accumulated, sgd(accumulated), (X, y), epochs=2, batch_size=4, shuffle=shuffle, accumulate_grad_batches=3)
    torch.manual_seed(5)
    t_large, _ = gl_fit(large, sgd(large), (X, y), epochs=2, batch_size=12, shuffle=shuffle)
    assert t_acc.state.global_step == t_large.state.global_step == 2 * -(-n // 12)
    assert_weights_differ(accumulated, base)
    assert_close_weights(accumulated, large, rtol=1e-5, atol=1e-6)


def test_accumulation_is_not_the_same_as_no_accumulation():
    """Sanity check of the test above: with k=1 and batch b the result differs from batch k*b."""
    X, y = make_data(48)
    base = make_model(dropout=False)
    small, large = copy.deepcopy(base), copy.deepcopy(base)
    gl_fit(small, sgd(small), (X, y), epochs=1, batch_size=4, shuffle=False)
    gl_fit(large, sgd(large), (X, y), epochs=1, batch_size=12, shuffle=False)
    assert not all(torch.allclose(p, q, rtol=1e-5, atol=1e-6) for p, q in zip(small.parameters(), large.parameters()))


@pytest.mark.parametrize("n", [48, 40, 42], ids=["divisible", "last-group-short", "last-batch-partial"])
@pytest.mark.parametrize("opt_key", ["sgd-momentum-instance", "adam-instance"])
def test_accumulation_equals_hand_written_accumulation(opt_key, n):
    """The exact rule (trainer.py): each batch's loss is divided by the number of batches in its
    group, the last group (possibly shorter) steps at the end of the epoch. 42 samples in batches of
    4 are 11 batches, the last with 2 samples: the last group is (4, 2), weighted 4/6 and 2/6."""
    spec, lr, twin_opt = OPTIMIZERS[opt_key]
    X, y = make_data(n)
    base = make_model(dropout=True)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(9)
    trainer, _ = gl_fit(ours, spec(ours), (X, y), epochs=2, batch_size=4, shuffle=True, lr=lr, accumulate_grad_batches=3)
    torch.manual_seed(9)
    hand_loop(theirs, twin_opt(theirs, trainer.optimizer), (X, y), epochs=2, batch_size=4, shuffle=True, accumulate=3)
    assert trainer.state.global_step == 2 * math.ceil(math.ceil(n / 4) / 3)
    assert_same_weights(ours, theirs)


def test_accumulation_steps_the_last_short_group_at_epoch_end():
    """10 batches with k=3: optimizer steps after batches 3, 6, 9 and 10 (not dropped, not carried over)."""
    X, y = make_data(40)
    steps_at: list[tuple[int, int]] = []

    class Record(gl.Callback):
        def on_train_batch_end(self, trainer, loss):
            steps_at.append((trainer.state.epoch, trainer.state.global_step))

    model = make_model(dropout=False)
    trainer = gl.Trainer(
        model,
        optimizer=sgd(model),
        loss="cross_entropy",
        max_epochs=2,
        accumulate_grad_batches=3,
        callbacks=[Record()],
        default_callbacks=False,
    )
    trainer.fit((X, y), batch_size=4, shuffle=False)
    assert [s for e, s in steps_at if e == 0] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 4]
    assert [s for e, s in steps_at if e == 1] == [4, 4, 5, 5, 5, 6, 6, 6, 7, 8]


# ----------------------------------------------------------------------------- seeds
def fit_seeded(seed, global_seed, *, shuffle=True):
    X, y = make_data()
    model = make_model(dropout=True)
    torch.manual_seed(global_seed)
    random.seed(global_seed)
    np.random.seed(global_seed)
    trainer, history = gl_fit(
        model, "adam", (X, y), epochs=2, batch_size=BATCH, shuffle=shuffle, lr=0.01, val=make_data(N_VAL, seed=1), seed=seed
    )
    return model, history


def test_seed_gives_identical_runs_whatever_the_global_rng_state():
    a, ha = fit_seeded(7, global_seed=1)
    rng_a = (torch.rand(1), random.random(), np.random.rand())
    b, hb = fit_seeded(7, global_seed=2)
    rng_b = (torch.rand(1), random.random(), np.random.rand())
    assert_same_weights(a, b)
    assert ha["loss"] == hb["loss"] and ha["val_loss"] == hb["val_loss"]
    assert torch.equal(rng_a[0], rng_b[0])
    assert rng_a[1:] == rng_b[1:], "seed=N must seed python's and numpy's generators too"


def test_different_seeds_give_different_runs():
    a, _ = fit_seeded(7, global_seed=1)
    b, _ = fit_seeded(8, global_seed=1)
    assert_weights_differ(a, b)


def test_seed_n_equals_the_hand_written_loop_after_manual_seed_n():
    X, y = make_data()
    base = make_model(dropout=True)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(999)  # overridden by seed=3 at the start of fit
    trainer, _ = gl_fit(ours, "adam", (X, y), epochs=2, batch_size=BATCH, shuffle=True, lr=0.01, seed=3)
    torch.manual_seed(3)
    hand_loop(
        theirs,
        torch.optim.Adam(theirs.parameters(), lr=0.01, **same_impl(trainer.optimizer)),
        (X, y),
        epochs=2,
        batch_size=BATCH,
        shuffle=True,
    )
    assert_same_weights(ours, theirs)


def test_seed_none_does_not_reseed():
    """seed=None: the result follows the user's global seed, and python/numpy RNGs are not touched."""
    a, _ = fit_seeded(None, global_seed=1)
    b, _ = fit_seeded(None, global_seed=2)
    assert_weights_differ(a, b)
    c, _ = fit_seeded(None, global_seed=1)
    assert_same_weights(a, c)

    random.seed(11)
    np.random.seed(11)
    py_state, np_state = random.getstate(), np.random.get_state()
    X, y = make_data()
    gl_fit(make_model(), "adam", (X, y), epochs=1, batch_size=BATCH, shuffle=True, lr=0.01)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert np.array_equal(after[1], np_state[1]) and after[2] == np_state[2]
