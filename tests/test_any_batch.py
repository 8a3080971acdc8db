"""Any model, any batch: structured data, dict batches, a model's own loss, a step of one's own, closures."""

import copy
import csv
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import gradloop as gl
from helpers import sigterm_at

N, FEATURES, CLASSES = 96, 5, 3


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    X1, X2 = torch.randn(N, FEATURES, generator=g), torch.randn(N, 2, generator=g)
    y = (X1[:, 0] + X2[:, 1] > 0).long() + (X1[:, 1] > 1).long()
    return X1, X2, y


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(FEATURES, 8), nn.Linear(2, 8)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, a, b):
        return self.head(torch.relu(self.a(a) + self.b(b)))


class OwnLoss(nn.Module):
    """The Hugging Face convention: labels in, an output with .loss and .logits out."""

    def __init__(self):
        super().__init__()
        self.net = TwoInputs()

    def forward(self, a, b, labels=None):
        logits = self.net(a, b)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def hand_loop(model, batches, forward_loss, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for batch in batches:
        optimizer.zero_grad()
        forward_loss(model, batch).backward()
        optimizer.step()


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def fit_and_hand_loop(make_model, fit, batches, forward_loss):
    """`fit(model)` on one copy and the hand-written loop on another, both from the same weights and
    the same global RNG state; returns (ours, theirs, what fit returned)."""
    torch.manual_seed(0)
    ours = make_model()
    theirs = copy.deepcopy(ours)
    torch.manual_seed(1)
    result = fit(ours)
    torch.manual_seed(1)
    hand_loop(theirs, batches, forward_loss)
    assert same_weights(ours, theirs)
    return ours, theirs, result


def trainer(model, **kwargs):
    kwargs = {"optimizer": "sgd", "lr": 0.1, "max_epochs": 1, "default_callbacks": False, "device": "cpu", **kwargs}
    return gl.Trainer(model, **kwargs)


def loader(*tensors, batch_size=16):
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True)


# ----------------------------------------------------------------------------- structured in-memory data
@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_several_inputs_train_exactly_like_the_hand_written_loop(form):
    X1, X2, y = data()
    inputs = (X1, X2) if form == "tuple" else {"a": X1, "b": X2}
    _, _, history = fit_and_hand_loop(
        TwoInputs,
        lambda model: trainer(model, loss=nn.CrossEntropyLoss()).fit((inputs, y), batch_size=16),
        loader(X1, X2, y),
        lambda m, b: nn.functional.cross_entropy(m(b[0], b[1]), b[2]),
    )
    assert list(history) == ["loss", "accuracy", "lr", "time"]


def test_a_dict_of_arrays_with_a_loss_takes_the_labels_as_targets():
    X1, X2, y = data()
    fit_and_hand_loop(
        TwoInputs,
        lambda model: trainer(model).fit({"a": X1, "b": X2, "labels": y}, batch_size=16),
        loader(X1, X2, y),
        lambda m, b: nn.functional.cross_entropy(m(a=b[0], b=b[1]), b[2]),
    )


def test_a_model_that_computes_its_own_loss():
    X1, X2, y = data()
    batches = {"a": X1, "b": X2, "labels": y}
    t = None

    def fit(model):
        nonlocal t
        t = trainer(model, loss=None, metrics=["accuracy"])
        return t.fit(batches, val=batches, batch_size=16)

    _, theirs, history = fit_and_hand_loop(OwnLoss, fit, loader(X1, X2, y), lambda m, b: m(b[0], b[1], labels=b[2]).loss)
    with torch.no_grad():
        logits = theirs(X1, X2).logits
    assert history["val_accuracy"][0] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert history["val_loss"][0] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    predictions = t.predict({"a": X1, "b": X2})  # no labels: the logits
    assert torch.allclose(predictions, logits, atol=1e-6)


class DictDataset(Dataset):
    def __init__(self, X1, X2, y):
        self.X1, self.X2, self.y = X1, X2, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"a": self.X1[i], "b": self.X2[i], "labels": self.y[i]}


def test_a_dataset_of_dicts_goes_through_a_dataloader_unchanged():
    X1, X2, y = data()
    fit_and_hand_loop(
        OwnLoss,
        lambda model: trainer(model, loss=None).fit(DictDataset(X1, X2, y), batch_size=16),
        DataLoader(DictDataset(X1, X2, y), batch_size=16, shuffle=True),
        lambda m, b: m(**b).loss,
    )


def test_lengths_that_differ_inside_the_structure_name_the_array():
    X1, X2, y = data()
    with pytest.raises(ValueError, match=r"train X\[0\] has 96 samples but X\[1\] has 95"):
        trainer(TwoInputs()).fit(((X1, X2[:-1]), y))
    with pytest.raises(ValueError, match=r"train \['a'\] has 96 samples but \['labels'\] has 90"):
        trainer(TwoInputs()).fit({"a": X1, "b": X2, "labels": y[:90]})
    with pytest.raises(ValueError, match=r"train X\['b'\] contains NaN or Inf \(first at row 3\)"):
        X2 = X2.clone()
        X2[3, 0] = float("nan")
        trainer(TwoInputs()).fit(({"a": X1, "b": X2}, y))


# ----------------------------------------------------------------------------- a step of one's own
class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.mu, self.logvar, self.dec = nn.Linear(FEATURES, 8), nn.Linear(8, 2), nn.Linear(8, 2), nn.Linear(2, FEATURES)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec(z), mu, logvar


def vae_step(model, batch):
    x, _ = batch
    recon, mu, logvar = model(x)
    rec = nn.functional.mse_loss(recon, x, reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
    return {"loss": rec + kl, "rec": rec, "kl": kl}


def test_a_step_logs_its_values_as_epoch_means(tmp_path):
    X1, _, _ = data()
    torch.manual_seed(0)
    model = VAE()
    ours = copy.deepcopy(model)
    torch.manual_seed(1)
    history = trainer(ours, step=vae_step, max_epochs=2, run_dir=tmp_path, default_callbacks=True).fit((X1, X1), val=(X1, X1), batch_size=N)
    assert list(history)[:6] == ["loss", "rec", "kl", "val_loss", "val_rec", "val_kl"]
    for prefix in ("", "val_"):  # the means of a sum are the sum of the means
        for loss, rec, kl in zip(history[prefix + "loss"], history[prefix + "rec"], history[prefix + "kl"]):
            assert loss == pytest.approx(rec + kl, rel=1e-6)
    with open(tmp_path / "metrics.csv", newline="") as f:
        columns = next(csv.reader(f))
    assert {"rec", "kl", "val_rec", "val_kl"} <= set(columns)


def test_step_values_accumulate_like_a_larger_batch():
    X1, _, _ = data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 4), nn.Tanh(), nn.Linear(4, FEATURES))

    def step(m, batch):
        x, _ = batch
        loss = nn.functional.mse_loss(m(x), x)
        return {"loss": loss, "l1": (m(x) - x).abs().mean()}

    small, large = copy.deepcopy(model), copy.deepcopy(model)
    h_small = trainer(small, step=step, accumulate_grad_batches=4).fit((X1, X1), batch_size=24, shuffle=False)
    h_large = trainer(large, step=step).fit((X1, X1), batch_size=N, shuffle=False)
    for p, q in zip(small.parameters(), large.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
    assert h_small["l1"][0] == pytest.approx(h_large["l1"][0], rel=1e-6)


def test_a_step_resumes_mid_epoch_bit_identically(tmp_path):
    X1, _, _ = data()
    torch.manual_seed(0)
    model = VAE()

    def make(net, run_dir, extra=()):
        return trainer(net, step=vae_step, max_epochs=3, seed=5, run_dir=run_dir, callbacks=list(extra))

    straight_model = copy.deepcopy(model)
    straight = make(straight_model, tmp_path / "straight").fit((X1, X1), batch_size=16)
    with pytest.raises(SystemExit):
        make(copy.deepcopy(model), tmp_path / "run", [sigterm_at(8)]).fit((X1, X1), batch_size=16)
    resumed_model = copy.deepcopy(model)
    resumed = make(resumed_model, tmp_path / "run").fit((X1, X1), batch_size=16, resume="last")
    assert same_weights(straight_model, resumed_model)
    assert [{k: v for k, v in e.items() if k != "time"} for e in resumed.epochs] == [
        {k: v for k, v in e.items() if k != "time"} for e in straight.epochs
    ]


def test_a_steps_non_finite_loss_stops_training():
    X1, _, _ = data()

    def step(m, batch):
        loss = nn.functional.mse_loss(m(batch[0]), batch[0])
        return loss * float("nan") if m.training and m.calls > 1 else loss

    model = nn.Linear(FEATURES, FEATURES)
    model.calls = 0
    model.register_forward_pre_hook(lambda m, args: setattr(m, "calls", m.calls + m.training))
    t = trainer(model, step=step, max_epochs=3, callbacks=[gl.TerminateOnNaN()])
    t.fit((X1, X1), batch_size=16)
    assert t.stop_reason == "non-finite loss" and t.state.global_step == 2


def test_a_step_trains_under_bf16_autocast():
    X1, _, _ = data()
    history = trainer(VAE(), step=vae_step, precision="bf16-mixed", max_epochs=2).fit((X1, X1), batch_size=32)
    assert all(torch.isfinite(torch.tensor(history["loss"])))


def test_predict_step_and_structured_predictions():
    X1, _, _ = data()
    model = VAE()
    t = trainer(model, step=vae_step, predict_step=lambda m, batch: m(batch[0])[1:])  # (mu, logvar)
    mu, logvar = t.predict(X1, batch_size=40)
    assert mu.shape == logvar.shape == (N, 2)
    with torch.no_grad():
        model.eval()
        assert torch.allclose(mu, model(X1)[1], atol=1e-6)
    dicts = trainer(model, step=vae_step, predict_step=lambda m, batch: {"mu": m(batch[0])[1]}).predict(X1, batch_size=40)
    assert torch.allclose(dicts["mu"], mu)


# ----------------------------------------------------------------------------- closures (LBFGS)
def test_lbfgs_gets_its_closure_and_equals_the_hand_written_one():
    X1, _, _ = data()
    target = X1[:, :1] * 2 - X1[:, 1:2]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))
    theirs = copy.deepcopy(model)
    t = gl.Trainer(
        model, optimizer=torch.optim.LBFGS(model.parameters(), lr=0.5), loss="mse", max_epochs=2, default_callbacks=False, device="cpu"
    )
    history = t.fit((X1, target), batch_size=N, shuffle=False)
    optimizer = torch.optim.LBFGS(theirs.parameters(), lr=0.5)
    losses = []

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(theirs(X1), target)
        loss.backward()
        losses.append(loss.item())
        return loss

    first_losses = []
    for _ in range(2):
        losses.clear()
        optimizer.step(closure)
        first_losses.append(losses[0])
    assert same_weights(model, theirs)
    assert history["loss"] == pytest.approx(first_losses, rel=1e-6)  # each batch counted once: its first evaluation


def test_a_closure_optimizer_refuses_accumulation():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="LBFGS .* cannot accumulate gradients"):
        gl.Trainer(model, optimizer=torch.optim.LBFGS(model.parameters()), loss="mse", accumulate_grad_batches=2)


# ----------------------------------------------------------------------------- bad input, before any weight changes
def bad_steps():
    def non_scalar(m, batch):
        return nn.functional.mse_loss(m(batch[0]), batch[0], reduction="none")

    def no_loss(m, batch):
        return {"mse": nn.functional.mse_loss(m(batch[0]), batch[0])}

    def not_a_tensor(m, batch):
        return {"loss": nn.functional.mse_loss(m(batch[0]), batch[0]), "count": 3}

    def raising(m, batch):
        return m(batch[0].T).sum()

    return [
        (non_scalar, ValueError, r"returned loss of shape \(2, 5\): it must be a scalar"),
        (no_loss, ValueError, r"has no 'loss'; it has 'mse'"),
        (not_a_tensor, TypeError, r"returned count=int: every logged value must be a scalar tensor"),
        (raising, ValueError, r"step\(model, batch\) fails on a train batch \(\(2, 5\) float32, \(2, 5\) float32\): RuntimeError"),
    ]


@pytest.mark.parametrize("step, error, match", bad_steps(), ids=lambda v: getattr(v, "__name__", ""))
def test_a_wrong_step_is_one_clear_error_before_training(step, error, match):
    X1, _, _ = data()
    model = nn.Linear(FEATURES, FEATURES)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        trainer(model, step=step).fit((X1, X1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_without_its_own_loss_and_labels_without_a_loss_are_clear_errors():
    X1, X2, y = data()

    class NoOwnLoss(TwoInputs):
        def forward(self, a, b, labels=None):
            return super().forward(a, b)

    with pytest.raises(ValueError, match=r"loss=None means the model computes its own loss, but it returned"):
        trainer(NoOwnLoss(), loss=None).fit({"a": X1, "b": X2, "labels": y})
    with pytest.raises(ValueError, match=r"a dict batch needs a 'labels' key for the loss; it has 'a', 'b'"):
        trainer(TwoInputs()).fit({"a": X1, "b": X2})
    with pytest.raises(ValueError, match=r"metrics \['accuracy'\] need outputs and targets"):
        trainer(VAE(), step=vae_step, metrics=["accuracy"]).fit((X1, X1))


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, X):
        self.X = X

    def __iter__(self):
        return iter((x, x) for x in self.X)


def test_values_of_a_step_on_data_that_cannot_be_sampled_ahead():
    X1, _, _ = data()
    history = trainer(VAE(), step=vae_step, max_epochs=2).fit(Stream(X1), val=Stream(X1[:32]), batch_size=32)
    assert {"rec", "kl", "val_rec", "val_kl"} <= set(history)


def test_predict_on_a_pair_of_inputs_says_how_to_pass_several():
    X1, X2, _ = data()
    t = trainer(TwoInputs())
    with pytest.raises(TypeError, match=r"first element of each batch.*predict\(\(\(X1, X2\),\)\)"):
        t.predict((X1, X2))  # read as (X, y), as for one input
    assert t.predict(((X1, X2),)).shape == (N, CLASSES)
    assert torch.equal(t.predict({"a": X1, "b": X2}), t.predict(((X1, X2),)))


def test_find_lr_with_a_step():
    X1, _, _ = data()
    result = trainer(VAE(), step=vae_step).find_lr((X1, X1), batch_size=32, num_steps=20)
    assert len(result.lrs) == 20 and all(lr > 0 for lr in result.lrs)
