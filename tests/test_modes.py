"""Train/eval modes: dropout on in training, off in validate/predict; no grads and no BatchNorm
updates from evaluation; the model's own mode (per submodule) is given back afterwards."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradloop as gl

FEATURES, CLASSES = 5, 3


def make_data(n: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FEATURES, generator=g) + 1.0, torch.randint(0, CLASSES, (n,), generator=g)


class DropoutProbe(nn.Module):
    """Dropout on an all-ones tensor: records whether any element was dropped, and the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(FEATURES, CLASSES)
        self.calls: list[tuple[bool, bool]] = []  # (module.training, some element dropped)

    def forward(self, x):
        mask = self.dropout(torch.ones_like(x))
        dropped = bool((mask == 0).any())
        self.calls.append((self.dropout.training, dropped))
        return self.linear(x * mask)


def trainer_for(model, **kwargs):
    kwargs.setdefault("optimizer", "sgd")
    kwargs.setdefault("lr", 0.01)
    return gl.Trainer(model, loss="cross_entropy", metrics=["accuracy"], default_callbacks=False, **kwargs)


def mode_map(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


# ----------------------------------------------------------------------------- dropout
def test_dropout_is_active_in_training_and_off_in_validation_and_predict():
    torch.manual_seed(0)
    model = DropoutProbe()
    X, y = make_data()
    seen: dict[str, list] = {"train": [], "val": []}

    class Phase(gl.Callback):
        def on_epoch_start(self, trainer):
            model.calls.clear()

        def on_train_batch_end(self, trainer, loss):
            seen["train"].extend(model.calls)
            model.calls.clear()

        def on_validation_end(self, trainer, logs):
            seen["val"].extend(model.calls)
            model.calls.clear()

    trainer = trainer_for(model, max_epochs=2, callbacks=[Phase()])
    trainer.fit((X, y), val=make_data(20, seed=1), batch_size=8)
    assert len(seen["train"]) == 2 * 5
    assert all(training and dropped for training, dropped in seen["train"]), seen["train"]
    assert len(seen["val"]) == 2 * 3
    assert all(not training and not dropped for training, dropped in seen["val"]), seen["val"]

    for call in (
        lambda: trainer.validate(make_data(20, seed=2)),
        lambda: trainer.test(make_data(20, seed=2)),
        lambda: trainer.predict(make_data(20, seed=2)[0]),
    ):
        model.calls.clear()
        call()
        assert model.calls and all(not training and not dropped for training, dropped in model.calls)


def test_predict_is_deterministic_with_dropout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.Dropout(0.5), nn.Linear(32, CLASSES))
    trainer = trainer_for(model)
    X, _ = make_data()
    a, b = trainer.predict(X), trainer.predict(X)
    assert torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(a, model(X))


def test_training_loss_differs_from_validation_loss_on_the_same_data_with_dropout():
    """With lr=0 the weights do not move; only dropout can make train and val loss differ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Dropout(0.9), nn.Linear(64, CLASSES))
    X, y = make_data()
    trainer = trainer_for(model, optimizer=lambda p: torch.optim.SGD(p, lr=0.0), max_epochs=1)
    history = trainer.fit((X, y), val=(X, y), batch_size=8)
    assert history["loss"][0] != pytest.approx(history["val_loss"][0], rel=1e-3)
    assert history["val_loss"][0] == pytest.approx(trainer.validate((X, y))["val_loss"], rel=1e-6)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("call", ["validate", "test", "predict"])
def test_evaluation_sets_no_grad(call):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.Linear(8, CLASSES))
    trainer = trainer_for(model)
    assert all(p.grad is None for p in model.parameters())
    data = make_data()
    getattr(trainer, call)(data if call != "predict" else data[0])
    assert all(p.grad is None for p in model.parameters())


def test_evaluation_after_fit_leaves_grads_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 8), nn.Linear(8, CLASSES))
    trainer = trainer_for(model, max_epochs=1)
    data = make_data()
    trainer.fit(data, batch_size=8)
    for p in model.parameters():
        p.grad = None
    trainer.validate(data)
    trainer.predict(data)
    assert all(p.grad is None for p in model.parameters())


def test_predict_output_does_not_require_grad():
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, CLASSES)
    out = trainer_for(model).predict(make_data()[0])
    assert not out.requires_grad
    out += 1  # a plain tensor, not an inference-mode tensor that refuses in-place updates


# ----------------------------------------------------------------------------- BatchNorm
def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))


def buffers(model):
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.parametrize("call", ["validate", "test", "predict"])
@pytest.mark.parametrize("kind", ["tensors", "dataset", "dataloader"])
def test_batchnorm_running_stats_unchanged_by_evaluation(call, kind):
    model = bn_model()
    trainer = trainer_for(model)
    X, y = make_data()
    data = {"tensors": (X, y), "dataset": TensorDataset(X, y), "dataloader": DataLoader(TensorDataset(X, y), batch_size=8)}[kind]
    before = buffers(model)
    getattr(trainer, call)(data)
    after = buffers(model)
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_batchnorm_running_stats_do_change_in_training():
    """Sanity check: fit does update the running stats (so the test above can fail)."""
    model = bn_model()
    before = buffers(model)
    trainer_for(model, max_epochs=1).fit(make_data(), batch_size=8)
    assert not torch.equal(before["1.running_mean"], model[1].running_mean)
    assert int(model[1].num_batches_tracked) == 5


def test_validation_during_fit_does_not_touch_batchnorm():
    """shuffle=False, no dropout: fit with validation leaves the same weights and buffers as without."""
    base = bn_model()
    with_val, without_val = copy.deepcopy(base), copy.deepcopy(base)
    data = make_data()
    trainer_for(with_val, max_epochs=3).fit(data, val=make_data(20, seed=5), batch_size=8, shuffle=False)
    trainer_for(without_val, max_epochs=3).fit(data, batch_size=8, shuffle=False)
    for (name, a), b in zip(with_val.state_dict().items(), without_val.state_dict().values()):
        assert torch.equal(a, b), name


def test_fit_input_checks_do_not_touch_batchnorm_or_dropout_rng():
    """The pre-flight check forward pass runs in eval mode: buffers and global RNG untouched
    when fit fails right after it (bad val labels are found after the train check)."""
    model = bn_model()
    before = buffers(model)
    rng = torch.get_rng_state()
    X, y = make_data()
    with pytest.raises(ValueError):
        trainer_for(model).fit((X, y), val=(X, y + 10), batch_size=8)
    for name in before:
        assert torch.equal(before[name], buffers(model)[name]), name
    assert torch.equal(rng, torch.get_rng_state())


# ----------------------------------------------------------------------------- previous mode restored
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.frozen = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(8))
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.head(self.frozen(self.body(x)))


def mixed_mode_net() -> Net:
    torch.manual_seed(0)
    net = Net()
    net.train()
    net.frozen.eval()  # the user deliberately keeps this part in eval mode
    return net


@pytest.mark.parametrize("call", ["validate", "test", "predict"])
def test_mixed_mode_restored_after_evaluation(call):
    net = mixed_mode_net()
    trainer = trainer_for(net)
    expected = mode_map(net)
    assert expected["frozen"] is False and expected[""] is True
    data = make_data()
    getattr(trainer, call)(data if call != "predict" else data[0])
    assert mode_map(net) == expected


@pytest.mark.parametrize("call", ["validate", "test", "predict"])
def test_eval_mode_restored_after_evaluation(call):
    net = mixed_mode_net()
    net.eval()
    trainer = trainer_for(net)
    data = make_data()
    getattr(trainer, call)(data if call != "predict" else data[0])
    assert all(not t for t in mode_map(net).values())


@pytest.mark.parametrize("call", ["validate", "predict"])
def test_mode_restored_even_when_evaluation_fails(call):
    net = mixed_mode_net()
    expected = mode_map(net)

    trainer = trainer_for(net)
    # a DataLoader whose second batch has the wrong width: the pre-check sees only the first samples
    X = torch.randn(16, FEATURES)
    good = DataLoader(TensorDataset(X, torch.zeros(16, dtype=torch.long)), batch_size=8)
    bad = [(X[:8], torch.zeros(8, dtype=torch.long)), (torch.randn(8, FEATURES + 1), torch.zeros(8, dtype=torch.long))]

    class ListLoader(DataLoader):
        def __iter__(self):
            return iter(bad)

    loader = ListLoader(good.dataset, batch_size=8)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        getattr(trainer, call)(loader)
    assert mode_map(net) == expected


def test_fit_validation_restores_the_training_mode():
    """After validation inside fit the model is back in the mode it trained in, and every
    training batch runs in train mode."""
    net = mixed_mode_net()
    train_modes, after_val_modes, val_modes = [], [], []

    class Spy(gl.Callback):
        def on_train_batch_end(self, trainer, loss):
            train_modes.append(mode_map(trainer.model))

        def on_validation_end(self, trainer, logs):
            after_val_modes.append(mode_map(trainer.model))

    handle = net.head.register_forward_hook(lambda m, i, o: val_modes.append(mode_map(net)) if not torch.is_grad_enabled() else None)
    trainer_for(net, max_epochs=2, callbacks=[Spy()]).fit(make_data(), val=make_data(16, seed=3), batch_size=8)
    handle.remove()
    assert train_modes and all(all(m.values()) for m in train_modes), "training batches must run in train mode"
    assert val_modes and all(not any(m.values()) for m in val_modes), "validation must run in eval mode"
    assert after_val_modes and all(m == train_modes[-1] for m in after_val_modes)


def test_fit_respects_a_submodule_that_overrides_train():
    """The textbook model.train() call honours a user's train() override (a common way to keep
    BatchNorm frozen); validation gives back exactly that mixed mode."""

    class FrozenBN(nn.BatchNorm1d):
        def train(self, mode: bool = True):
            return super().train(False)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(FEATURES, 8), FrozenBN(8), nn.Linear(8, CLASSES))
    net.train()
    stats = buffers(net)
    after_val = []

    class Spy(gl.Callback):
        def on_validation_end(self, trainer, logs):
            after_val.append(mode_map(trainer.model))

    trainer_for(net, max_epochs=2, callbacks=[Spy()]).fit(make_data(), val=make_data(16, seed=3), batch_size=8)
    assert after_val == [{"": True, "0": True, "1": False, "2": True}] * 2
    assert torch.equal(stats["1.running_mean"], net[1].running_mean)
