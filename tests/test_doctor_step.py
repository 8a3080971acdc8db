"""gl.doctor(..., step=...): the training checks train on the step's loss, the checks that compare
outputs with targets use the step's "outputs" and "targets" (or are skipped with a note when it
returns none), a failing step is a failing check naming it, and the model and RNGs are left as found."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradloop.doctor import doctor, lr_find

FAST = dict(overfit_steps=60, overfit_lr=1e-2, lr_find_steps=40)
NOTE = "the step does not return outputs and targets"
OUTPUT_CHECKS = ("model.output", "model.loss_fit", "model.initial_loss", "data.labels")


class VAE(nn.Module):
    """A small variational autoencoder: samples its latent code in train mode, uses the mean in eval."""

    def __init__(self, features: int = 8, latent: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(features, 32), nn.ReLU())
        self.mu, self.logvar = nn.Linear(32, latent), nn.Linear(32, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decoder(z), mu, logvar


def vae_step(model: nn.Module, batch):
    x, _ = batch
    recon, mu, logvar = model(x)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
    return {"loss": F.mse_loss(recon, x) + 1e-3 * kl, "kl": kl}


def low_rank(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """8 features spanned by 2 factors (a 2-d latent code can reconstruct them), and class labels."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 2, generator=g) @ torch.randn(2, 8, generator=g) / 2
    return X, torch.arange(n) % 3


def blobs(n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    X = torch.randn(3, 8, generator=g)[y] * 2 + torch.randn(n, 8, generator=g)
    return (X - X.mean(0)) / X.std(0), y


def mlp(outputs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, outputs))


def classify_step(model: nn.Module, batch):
    x, y = batch
    out = model(x)
    l2 = sum((p**2).sum() for p in model.parameters())
    return {"loss": F.cross_entropy(out, y) + 1e-5 * l2, "l2": l2, "outputs": out, "targets": y}


def statuses(report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


# --------------------------------------------------------------------------- a step without outputs
def test_a_vae_step_trains_and_the_output_checks_are_skipped_with_the_note():
    report = doctor(VAE(), low_rank(), step=vae_step, device="cpu", **FAST)
    found = statuses(report)
    assert found["train.gradients"] == "pass" and found["train.overfit"] == "pass", report
    assert found["train.nan_origin"] == "pass" and found["data.shapes"] == "pass" and found["data.finite"] == "pass"
    skipped = dict(report.skipped)
    for name in OUTPUT_CHECKS:
        assert name not in found and NOTE in skipped[name], (name, report)
    assert report.ok


def test_with_a_step_the_loss_argument_does_not_judge_the_data():
    """cross_entropy (the default loss) would call float targets wrong: with a step that returns no
    outputs and targets, nothing says what the targets are, so the data checks do not judge them."""
    X, _ = low_rank()
    report = doctor(VAE(), (X, X.clone()), step=vae_step, device="cpu", checks=["data", "train.gradients"])
    assert statuses(report)["data.shapes"] == "pass" and report.ok, report


def test_a_step_reads_a_loader_without_targets_as_the_trainer_gives_it():
    X, _ = low_rank()
    seen = []

    def step(model, batch):
        seen.append(type(batch))
        (x,) = batch  # a TensorDataset of one tensor: the loader gives [x]
        recon, mu, logvar = model(x)
        return F.mse_loss(recon, x)

    report = doctor(VAE(), DataLoader(TensorDataset(X), batch_size=50), step=step, device="cpu", checks=["data.shapes", "train.gradients"])
    assert statuses(report) == {"data.shapes": "pass", "train.gradients": "pass"}, report
    assert seen and all(kind is list for kind in seen)


# --------------------------------------------------------------------------- a step with outputs
def test_a_step_returning_outputs_and_targets_gets_them_checked():
    report = doctor(mlp(), blobs(), step=classify_step, device="cpu", **FAST)
    found = statuses(report)
    for name in ("model.output", "model.loss_fit", "model.initial_loss", "data.labels", "data.balance", "train.overfit"):
        assert found[name] == "pass", (name, report)
    assert "the step's outputs (64, 3)" in report["model.output"].message and "cross_entropy" in report["model.output"].message
    assert "ln 3" in report["model.initial_loss"].message


def test_outputs_that_do_not_fit_the_loss_fail_model_output_and_skip_training():
    def step(model, batch):
        x, y = batch
        out = model(x)
        return {"loss": F.cross_entropy(out, y), "outputs": out, "targets": y.reshape(-1, 1)}

    report = doctor(mlp(), blobs(), step=step, device="cpu", **FAST)
    check = report["model.output"]
    assert check.status == "fail" and "flatten the labels" in check.message
    assert "train.overfit" in dict(report.skipped)


def test_with_loss_none_the_steps_outputs_are_compared_by_shape_only():
    report = doctor(mlp(), blobs(), step=classify_step, loss=None, device="cpu", checks=["model", "data.labels"])
    assert report["model.output"].status == "pass" and "no loss given" in report["model.output"].message
    skipped = dict(report.skipped)
    assert "pass loss=" in skipped["model.loss_fit"] and "pass loss=" in skipped["model.initial_loss"]

    def ragged(model, batch):
        x, y = batch
        out = model(x)
        return {"loss": out.square().mean(), "outputs": out, "targets": y[:1]}

    check = doctor(mlp(), blobs(), step=ragged, loss=None, device="cpu", checks=["model.output"])["model.output"]
    assert check.status == "fail" and "one row of each per sample" in check.message


def test_a_model_the_default_step_cannot_call_is_fine_with_a_step():
    """model(x) alone would fail (the model takes two inputs): the doctor calls the model only through the step."""

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(8, 3)

        def forward(self, x, scale):
            return self.fc(x) * scale

    def step(model, batch):
        x, y = batch
        out = model(x, 1.0)
        return {"loss": F.cross_entropy(out, y), "outputs": out, "targets": y}

    report = doctor(TwoInputs(), blobs(), step=step, device="cpu", **FAST)
    assert report.ok and statuses(report)["model.train_eval"] == "pass", report


# --------------------------------------------------------------------------- a failing step
def test_a_step_that_raises_is_a_failing_check_naming_the_step():
    def broken(model, batch):
        raise RuntimeError("boom in the step")

    report = doctor(mlp(), blobs(), step=broken, device="cpu", **FAST)
    check = report["model.output"]
    assert check.status == "fail" and "step(model, batch) raised RuntimeError" in check.message and "boom in the step" in check.message
    assert "fix step(model, batch)" in check.advice
    assert dict(report.skipped)["train.gradients"] == "the step fails on the data (see model.output)"
    assert not report.ok


def test_a_step_that_raises_only_in_training_fails_the_training_checks():
    def train_only(model, batch):
        if model.training:
            raise ValueError("no training today")
        return classify_step(model, batch)

    report = doctor(mlp(), blobs(), step=train_only, device="cpu", **FAST)
    assert report["model.output"].status == "pass"
    for name in ("train.gradients", "train.nan_origin", "train.overfit", "train.lr_find"):
        check = report[name]
        assert check.status == "fail" and "step(model, batch) raised ValueError" in check.message and "no training today" in check.message
        assert "fix step(model, batch)" in check.advice


@pytest.mark.parametrize(
    "returned, expected",
    [
        (lambda out: {"kl": out.mean()}, "has no 'loss'"),
        (lambda out: out, "must be a scalar"),
        (lambda out: {"loss": out.mean(), "kl": 3.0}, "every logged value must be a scalar tensor"),
    ],
)
def test_a_step_returning_what_the_trainer_refuses_fails_with_the_cores_message(returned, expected):
    def step(model, batch):
        return returned(model(batch[0]))

    check = doctor(mlp(), blobs(), step=step, device="cpu", checks=["model.output"])["model.output"]
    assert check.status == "fail" and expected in check.message and "step(model, batch)" in check.message


def test_a_step_that_is_not_callable_is_a_bad_argument():
    with pytest.raises(TypeError, match="step must be a function"):
        doctor(mlp(), blobs(), step="vae_step")


# --------------------------------------------------------------------------- lr_find and leaving things as found
def test_lr_find_runs_on_the_steps_loss():
    result = lr_find(VAE(), low_rank(), step=vae_step, device="cpu", num_steps=40)
    assert len(result.lrs) >= 10 and result.suggestion is not None

    def broken(model, batch):
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match=r"step\(model, batch\) raised RuntimeError"):
        lr_find(VAE(), low_rank(), step=broken, device="cpu", num_steps=10)


@pytest.mark.parametrize("seed", [0, None])
def test_the_model_its_modes_and_the_rngs_are_left_as_found(seed):
    model = VAE()
    model.decoder.eval()  # a mixed mode must survive too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    report = doctor(model, low_rank(), step=vae_step, device="cpu", seed=seed, **FAST)
    assert statuses(report)["train.overfit"] == "pass"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert random.getstate() == rng[0]
    numpy_state = np.random.get_state()
    assert numpy_state[0] == rng[1][0] and np.array_equal(numpy_state[1], rng[1][1]) and numpy_state[2:] == rng[1][2:]
    assert torch.equal(torch.get_rng_state(), rng[2])
