"""fit(dataset, loader_options={...}): DataLoader settings, checked; workers seeded from the run; stateful loaders resumed in O(1)."""

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import gradloop as gl
from helpers import PairDataset, same_weights, straight_and_resumed

X = torch.randn(60, 6, generator=torch.Generator().manual_seed(1))
Y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long()


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


class Augmenting(PairDataset):
    """Random noise from torch, numpy and python in __getitem__, as image augmentations draw it."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        noise = torch.randn(x.shape) * 0.1 + float(np.random.uniform(-0.1, 0.1)) + random.uniform(-0.1, 0.1)
        return x + noise, y


class Counting(PairDataset):
    def __init__(self, X, y):
        super().__init__(X, y)
        self.fetched = 0

    def __getitem__(self, i):
        self.fetched += 1
        return super().__getitem__(i)


def trainer(model, run_dir=None, callbacks=(), seed=4, epochs=3):
    return gl.Trainer(
        model, lr=1e-2, max_epochs=epochs, metrics=[], seed=seed, run_dir=run_dir, callbacks=list(callbacks), default_callbacks=False
    )


# ----------------------------------------------------------------------------- the options, checked
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_worker": 2}, r"^unknown loader option 'num_worker' \(did you mean 'num_workers'\?\): loader_options takes num_workers, "),
        ({"batch_size": 8}, r"^loader_options\['batch_size'\] is set by gradloop: pass fit\(batch_size=\.\.\.\)$"),
        ({"shuffle": False}, r"^loader_options\['shuffle'\] is set by gradloop: pass fit\(shuffle=\.\.\.\)$"),
        ({"sampler": None}, r"^loader_options\['sampler'\] is set by gradloop: pass a DataLoader of your own"),
        ({"persistent_workers": True}, r"^loader_options \{'persistent_workers': True\}: persistent_workers option needs num_workers > 0$"),
    ],
)
def test_bad_loader_options_are_one_clear_line(options, message):
    with pytest.raises(ValueError, match=message) as info:
        trainer(make_model()).fit(PairDataset(X, Y), batch_size=8, loader_options=options)
    assert "\n" not in str(info.value)


def test_loader_options_without_a_dataset_are_an_error():
    with pytest.raises(ValueError, match=r"^loader_options apply to a Dataset that gradloop batches; this data is tuple: "):
        trainer(make_model()).fit((X, Y), loader_options={"num_workers": 2})
    with pytest.raises(TypeError, match="loader_options must be a dict"):
        trainer(make_model()).fit(PairDataset(X, Y), loader_options=["num_workers"])


def test_loader_options_reach_the_loader_and_keep_the_resumable_sampler():
    from gradloop.data.batches import OrderedBatchSampler, make_batches

    options = {"num_workers": 2, "prefetch_factor": 3}
    batches = make_batches(PairDataset(X, Y), 8, True, torch.device("cpu"), "train", loader_options=options)
    assert batches.loader.num_workers == 2 and batches.loader.prefetch_factor == 3
    assert isinstance(batches.loader.batch_sampler, OrderedBatchSampler)


def test_without_workers_the_dataset_draws_as_in_the_hand_written_loop():
    """num_workers=0 leaves the Dataset's random numbers to the process's generators: the tutorial loop's numbers."""
    hand = make_model()
    gl.seed_everything(11)
    loader = DataLoader(Augmenting(X, Y), batch_size=8, shuffle=True)
    optimizer = torch.optim.Adam(hand.parameters(), lr=1e-2)
    for _ in range(2):
        for xb, yb in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(hand(xb), yb).backward()
            optimizer.step()
    mine = make_model()
    gl.seed_everything(11)
    trainer(mine, seed=None, epochs=2).fit(Augmenting(X, Y), batch_size=8, loader_options={"num_workers": 0})
    assert same_weights(hand, mine)


# ----------------------------------------------------------------------------- workers, seeded from the run
def fit_with_workers(options, seed=4):
    model = make_model()
    trainer(model, seed=seed, epochs=2).fit(Augmenting(X, Y), val=Augmenting(X[:20], Y[:20]), batch_size=8, loader_options=options)
    return model


def test_workers_augment_the_same_way_on_every_run_and_whichever_worker_loads_a_batch():
    two = fit_with_workers({"num_workers": 2})
    assert same_weights(two, fit_with_workers({"num_workers": 2}))
    assert same_weights(two, fit_with_workers({"num_workers": 1, "persistent_workers": True}))
    assert not same_weights(two, fit_with_workers({"num_workers": 2}, seed=5))  # the seed does reach the workers


@pytest.mark.parametrize("options", [{"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}])
def test_workers_resume_mid_epoch_bit_identically(tmp_path, options):
    def make_trainer(model, run_dir, callbacks):
        return trainer(model, run_dir, callbacks)

    straight, resumed, _ = straight_and_resumed(
        make_model, make_trainer, lambda: Augmenting(X, Y), 10, tmp_path, batch_size=8, loader_options=options
    )
    assert same_weights(straight, resumed)


# ----------------------------------------------------------------------------- a stateful loader
@pytest.mark.parametrize("stop_step", [3, 8, 11])  # mid-epoch, an epoch's end (8 batches), mid-epoch later
@pytest.mark.parametrize("generator", [False, True])
def test_a_stateful_dataloader_resumes_bit_identically_without_replay(tmp_path, stop_step, generator):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    datasets = []

    def make_train():
        datasets.append(Counting(X, Y))
        extra = {"generator": torch.Generator().manual_seed(2)} if generator else {}
        return stateful.StatefulDataLoader(datasets[-1], batch_size=8, shuffle=True, **extra)

    def make_trainer(model, run_dir, callbacks):
        return trainer(model, run_dir, callbacks)

    straight, resumed, resumed_trainer = straight_and_resumed(make_model, make_trainer, make_train, stop_step, tmp_path)
    assert same_weights(straight, resumed)
    batches_left = 3 * 8 - stop_step
    samples_left = len(X) * 3 - (stop_step // 8) * len(X) - (stop_step % 8) * 8
    # fetched: the batches left and the two samples fit() checks the model with, none replayed
    assert datasets[-1].fetched == samples_left + 2 and resumed_trainer.state.global_step == stop_step + batches_left


def test_a_stateful_loader_is_recognised_without_importing_torchdata():
    import subprocess
    import sys

    from gradloop.data.batches import make_batches

    class OwnState(DataLoader):
        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    batches = make_batches(OwnState(PairDataset(X, Y), batch_size=8), 8, True, torch.device("cpu"), "train")
    assert batches.stateful and not make_batches(DataLoader(PairDataset(X, Y)), 8, True, torch.device("cpu"), "train").stateful
    script = "import sys, gradloop; from gradloop.data import batches, fast_loader; assert 'torchdata' not in sys.modules"
    subprocess.run([sys.executable, "-c", script], check=True)


def test_evaluation_and_prediction_take_loader_options_too():
    model = make_model()
    plain = trainer(model)
    with_workers = plain.predict(PairDataset(X, Y), loader_options={"num_workers": 1})
    assert torch.equal(with_workers, plain.predict(PairDataset(X, Y)))
    assert plain.validate(PairDataset(X, Y), loader_options={"num_workers": 1}) == plain.validate(PairDataset(X, Y))
    with pytest.raises(ValueError, match="did you mean 'timeout'"):
        plain.test(PairDataset(X, Y), loader_options={"timeot": 1})
