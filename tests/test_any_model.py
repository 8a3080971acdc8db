"""Models and optimizers off the beaten path, against their hand-written loops: torch.equal weights.

An L-BFGS step through the Trainer's closure, and a VAE trained with `step=` whose forward draws
noise (torch.randn_like): with seed=None gradloop draws the epoch's order from the global RNG as a
DataLoader iterator does, before the first batch, so the noise comes out in the same order too.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradloop as gl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs: max |diff| {(sa[name] - sb[name]).abs().max()}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("epochs", [1, 3])
def test_lbfgs_matches_the_hand_written_closure(dtype, epochs):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 5, generator=g, dtype=dtype)
    y = (X[:, :1] * 2 - X[:, 1:2] ** 2 + 0.1 * torch.randn(40, 1, generator=g, dtype=dtype)).to(dtype)
    torch.manual_seed(0)
    model_a = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    model_b = copy.deepcopy(model_a)

    trainer = gl.Trainer(
        model_a,
        optimizer=torch.optim.LBFGS(model_a.parameters(), lr=0.8),
        loss="mse",
        max_epochs=epochs,
        default_callbacks=False,
        device="cpu",
    )
    history = trainer.fit((X, y), batch_size=len(X), shuffle=False)

    optimizer = torch.optim.LBFGS(model_b.parameters(), lr=0.8)
    losses: list[list[float]] = []  # per step, the loss of every evaluation of the closure

    def closure():
        optimizer.zero_grad()
        loss = F.mse_loss(model_b(X), y)
        loss.backward()
        losses[-1].append(loss.item())
        return loss

    for _ in range(epochs):
        losses.append([])
        optimizer.step(closure)
    first_losses, evaluations = [step[0] for step in losses], sum(map(len, losses))

    assert evaluations > epochs  # L-BFGS did re-evaluate: the test exercises the closure, not one gradient step
    assert_same_weights(model_a, model_b)
    assert history["loss"] == pytest.approx(first_losses, rel=1e-12 if dtype == torch.float64 else 1e-6)  # before each step
    assert trainer.state.global_step == epochs
    assert optimizer.state_dict()["state"][0]["n_iter"] == trainer.optimizer.state_dict()["state"][0]["n_iter"]


def test_vae_step_matches_the_hand_written_loop():
    vae = load_example("vae.py")
    X = torch.from_numpy(vae.load_digits()[0])  # 1437 digits: 44 full batches of 32 and one of 29
    torch.manual_seed(0)
    model_a = vae.VAE()
    model_b = copy.deepcopy(model_a)

    torch.manual_seed(0)
    trainer = gl.Trainer(
        model_a, optimizer="adam", lr=1e-3, step=vae.vae_step, max_epochs=1, seed=None, default_callbacks=False, device="cpu"
    )
    history = trainer.fit((X, X), batch_size=32, shuffle=True)
    rng_after_trainer = torch.get_rng_state()

    torch.manual_seed(0)
    opt = torch.optim.Adam(model_b.parameters(), lr=1e-3)
    model_b.train()
    total = recon = kl = 0.0
    for x, _ in DataLoader(TensorDataset(X, X), batch_size=32, shuffle=True):
        opt.zero_grad()
        out = vae.vae_step(model_b, (x, x))
        out["loss"].backward()
        opt.step()
        total, recon, kl = total + out["loss"].item() * len(x), recon + out["recon"].item() * len(x), kl + out["kl"].item() * len(x)

    assert_same_weights(model_a, model_b)
    assert torch.equal(rng_after_trainer, torch.get_rng_state())  # the same draws, as many of them
    assert history["loss"][0] == pytest.approx(total / len(X), rel=1e-5)
    assert history["recon"][0] == pytest.approx(recon / len(X), rel=1e-5)
    assert history["kl"][0] == pytest.approx(kl / len(X), rel=1e-5)
