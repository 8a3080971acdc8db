"""The doctor asks the core: for the same loss, data and optimizer arguments it gives the Trainer's answer.

Each test states a concept the doctor used to keep a copy of (fit rules, label range, optimizer checks,
loss identity, RNG preservation) and checks that the doctor and the Trainer agree on it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.doctor import doctor, lr_find

FAST = dict(overfit_steps=20, overfit_lr=1e-2, lr_find_steps=20)


def data(n: int = 96, features: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, features, generator=g)
    return X, (X[:, 0] > 0).long() + (X[:, 1] > 1).long()


def net(outputs: int = 3, inputs: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, 16), nn.ReLU(), nn.Linear(16, outputs))


def trainer_error(model: nn.Module, train, **kwargs) -> BaseException:
    with pytest.raises((ValueError, TypeError)) as info:
        gl.Trainer(model, device="cpu", default_callbacks=False, **kwargs).fit(train, batch_size=16)
    return info.value


@pytest.mark.parametrize(
    "outputs, loss, targets",
    [
        (1, "mse", lambda X, y: X[:, 0].clone()),  # (N, 1) outputs vs (N,) targets: would broadcast
        (3, "cross_entropy", lambda X, y: y.reshape(-1, 1)),  # labels (N, 1)
        (1, "bce_with_logits", lambda X, y: (y > 0).long().reshape(-1, 1)),  # integer targets
        (3, nn.CrossEntropyLoss(), lambda X, y: y.reshape(-1, 1)),  # a loss module is its name
    ],
)
def test_model_output_fails_with_the_trainers_fit_message(outputs, loss, targets):
    X, y = data()
    train = (X, targets(X, y))
    expected = str(trainer_error(net(outputs), train, loss=loss))
    check = doctor(net(outputs), train, loss=loss, device="cpu", checks=["model.output"])["model.output"]
    assert check.status == "fail" and check.message == expected


def test_labels_out_of_range_give_the_trainers_message():
    X, y = data()
    y = y.clone()
    y[5] = 7
    expected = str(trainer_error(net(), (X, y), loss="cross_entropy"))
    check = doctor(net(), (X, y), device="cpu", checks=["data.labels"])["data.labels"]
    assert check.status == "fail" and check.message == expected
    assert "labels must lie in [0, 3)" in expected and "contains 7" in expected


def test_labels_equal_to_the_loss_ignore_index_are_not_out_of_range():
    X, y = data()
    y = y.clone()
    y[:4] = -100  # nn.CrossEntropyLoss skips these (its default ignore_index)
    report = doctor(net(), (X, y), loss=nn.CrossEntropyLoss(), device="cpu", checks=["data.labels", "model.output"])
    assert report["data.labels"].status == "pass" and report["model.output"].status == "pass"
    y[5] = 9
    assert "contains 9" in doctor(net(), (X, y), device="cpu", checks=["data.labels"])["data.labels"].message


@pytest.mark.parametrize("optimizer, lr", [("sgd", None), ("adamm", 1e-3), ("adam", -1.0), ("adam", True), (42, 1e-3)])
def test_bad_optimizer_arguments_raise_the_trainers_error(optimizer, lr):
    with pytest.raises((ValueError, TypeError)) as expected:
        gl.Trainer(nn.Linear(6, 3), optimizer=optimizer, lr=lr, device="cpu", default_callbacks=False)
    with pytest.raises(type(expected.value)) as got:
        doctor(net(), data(), optimizer=optimizer, lr=lr, device="cpu")
    assert str(got.value) == str(expected.value)


def test_lr_find_needs_no_lr_for_sgd_but_checks_the_name():
    result = lr_find(net(), data(), optimizer="sgd", num_steps=10, device="cpu")
    assert len(result.lrs) == 10 and result.current_lr is None  # sgd has no default lr to compare with
    with pytest.raises(ValueError, match=r"unknown optimizer 'sgdd' \(did you mean 'sgd'\?\)"):
        lr_find(net(), data(), optimizer="sgdd", device="cpu")


@pytest.mark.parametrize(
    "module, name, targets",
    [
        (nn.CrossEntropyLoss(), "cross_entropy", lambda X, y: y),
        (nn.MSELoss(), "mse", lambda X, y: X[:, :1].clone()),
        (nn.BCEWithLogitsLoss(), "bce_with_logits", lambda X, y: (y > 0).float().reshape(-1, 1)),
    ],
)
def test_a_loss_module_gets_the_checks_of_its_name(module, name, targets):
    X, y = data()
    outputs = 3 if name == "cross_entropy" else 1
    reports = [doctor(net(outputs), (X, targets(X, y)), loss=loss, device="cpu", **FAST) for loss in (module, name)]
    assert [(c.name, c.status, c.message) for c in reports[0].checks] == [(c.name, c.status, c.message) for c in reports[1].checks]
    assert reports[0].skipped == reports[1].skipped


CUDA_RNG_AFTER = """
import sys, torch
from torch import nn
torch.manual_seed(3)  # CUDA is not initialized yet: its generators get this seed when it is
X = torch.randn(96, 6)
model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 3))  # draws CUDA random numbers
if sys.argv[1] != "plain":
    from gradloop.doctor import doctor
    doctor(model, (X, (X[:, 0] > 0).long()), device="cuda", seed=None if sys.argv[1] == "None" else 0, lr_find_steps=10)
print(torch.get_rng_state().sum().item(), [s.tolist() for s in torch.cuda.get_rng_state_all()])
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("seed", ["0", "None"])
def test_the_cuda_rng_is_left_as_found_even_when_the_doctor_initializes_cuda(seed):
    def after(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", CUDA_RNG_AFTER, mode], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert after(seed) == after("plain")
