"""gl.doctor: each check flags a deliberately broken model or dataset and passes a healthy one,
never raises for faults in the data or model, and leaves the model and the RNGs as it found them.

Step counts are kept small (FAST) so the whole file runs in well under a minute on two cores."""

from __future__ import annotations

import json
import random
import time
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import gradloop as gl
from gradloop.doctor import CHECK_NAMES, DoctorReport, LRFindResult, doctor, lr_find
from gradloop.doctor.data_checks import shared_rows

FAST = dict(overfit_steps=60, overfit_lr=1e-2, lr_find_steps=40)
FEATURES, CLASSES = 8, 3


def blobs(n: int = 240, seed: int = 0, spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three overlapping Gaussian blobs, standardized: a small, healthy classification task."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLASSES, FEATURES, generator=g) * spread
    y = torch.arange(n) % CLASSES
    X = centers[y] + torch.randn(n, FEATURES, generator=g)
    return (X - X.mean(0)) / X.std(0), y


def mlp(inputs: int = FEATURES, outputs: int = CLASSES, *extra: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(inputs, 32), nn.ReLU(), nn.Linear(32, outputs), *extra)


def statuses(report: DoctorReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# --------------------------------------------------------------------------- healthy cases
def sklearn_task(name: str):
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    Xt, Xv, yt, yv = train_test_split(X, y, test_size=0.2, random_state=0)
    scaler = StandardScaler().fit(Xt)
    Xt, Xv = scaler.transform(Xt), scaler.transform(Xv)
    if name == "diabetes":
        mean, std = yt.mean(), yt.std()
        yt, yv = ((yt - mean) / std).reshape(-1, 1), ((yv - mean) / std).reshape(-1, 1)
        return (Xt, yt), (Xv, yv), 1, "mse"
    return (Xt, yt), (Xv, yv), int(y.max()) + 1, "cross_entropy"


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer", "diabetes"])
def test_healthy_mlp_passes_on_each_bundled_dataset(name):
    train, val, outputs, loss = sklearn_task(name)
    report = doctor(mlp(train[0].shape[1], outputs), train, loss=loss, val=val, **FAST)
    assert report.ok, str(report)
    allowed = {"data.variance"} if name == "digits" else set()  # digits has 3 all-zero border pixels
    assert {n: s for n, s in statuses(report).items() if s != "pass" and n not in allowed} == {}, str(report)
    expected = set(CHECK_NAMES) - ({"data.labels", "data.balance"} if loss == "mse" else set())
    assert set(statuses(report)) == expected
    assert report.lr_find is not None and report.lr_find.suggestion is not None


# --------------------------------------------------------------------------- one broken case per check
def test_detached_layer_gets_no_gradient():
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Linear(FEATURES, 32)
            self.head = nn.Linear(32, CLASSES)

        def forward(self, x):
            return self.head(torch.relu(self.encoder(x)).detach())

    report = doctor(Detached(), blobs(), checks=["train.gradients"])
    check = report["train.gradients"]
    assert check.status == "fail" and not report.ok
    assert "encoder.weight" in check.message and "encoder.bias" in check.message and "head" not in check.message
    assert "no gradient" in check.message and check.advice


def test_unused_layer_is_listed():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()
            self.spare = nn.Linear(3, 3)  # registered but never called in forward()

        def forward(self, x):
            return self.net(x)

    check = doctor(Unused(), blobs(), checks=["train.gradients"])["train.gradients"]
    assert check.status == "fail" and "spare.weight" in check.message


def test_frozen_layer_is_a_warning_and_stays_frozen():
    model = mlp()
    model[0].requires_grad_(False)
    report = doctor(model, blobs(), checks=["train.gradients"])
    check = report["train.gradients"]
    assert check.status == "warn" and report.ok
    assert "frozen" in check.message and "0.weight" in check.message and "2.weight" not in check.message
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad


def test_final_softmax_before_cross_entropy_fails():
    report = doctor(mlp(FEATURES, CLASSES, nn.Softmax(dim=1)), blobs(), checks=["model.loss_fit"])
    check = report["model.loss_fit"]
    assert check.status == "fail" and "Softmax" in check.message and "remove" in check.advice


def test_softmax_in_forward_without_a_module_is_caught_by_the_outputs():
    model = mlp(FEATURES, CLASSES, Lambda(lambda x: F.softmax(x, dim=1)))
    assert doctor(model, blobs(), checks=["model.loss_fit"])["model.loss_fit"].status == "fail"


@pytest.mark.parametrize(
    "final, loss, status",
    [
        (nn.LogSoftmax(dim=1), "cross_entropy", "warn"),  # redundant but harmless
        (nn.LogSoftmax(dim=1), "nll", "pass"),
        (None, "nll", "fail"),  # nll needs log-probabilities
        (nn.ReLU(), "cross_entropy", "warn"),
    ],
)
def test_final_activation_vs_loss(final, loss, status):
    model = mlp(FEATURES, CLASSES, *([final] if final is not None else []))
    assert doctor(model, blobs(), loss=loss, checks=["model.loss_fit"])["model.loss_fit"].status == status


def test_sigmoid_before_bce_with_logits_fails():
    X, y = blobs()
    target = (y == 0).float().reshape(-1, 1)
    report = doctor(mlp(FEATURES, 1, nn.Sigmoid()), (X, target), loss="bce_with_logits", checks=["model"])
    assert report["model.loss_fit"].status == "fail" and "Sigmoid" in report["model.loss_fit"].message
    healthy = doctor(mlp(FEATURES, 1), (X, target), loss="bce_with_logits", checks=["model", "data"])
    assert healthy.ok and healthy["model.loss_fit"].status == "pass"


def test_bounded_output_for_a_wider_regression_target_fails():
    X, _ = blobs()
    y = (X[:, :1] * 3).clone()
    report = doctor(mlp(FEATURES, 1, nn.Sigmoid()), (X, y), loss="mse", checks=["model.loss_fit"])
    assert report["model.loss_fit"].status == "fail" and "[0, 1]" in report["model.loss_fit"].message


def test_labels_out_of_range_are_a_failing_check_not_an_exception():
    X, y = blobs()
    y = y.clone()
    y[:4] = 5  # a model with 3 outputs
    report = doctor(mlp(), (X, y), **FAST)
    check = report["data.labels"]
    assert check.status == "fail" and "labels must lie in [0, 3)" in check.message and "contains 5" in check.message
    assert "give the model 6 outputs" in check.message and check.advice
    # The other checks still run, on the rows with valid labels.
    assert report["model.output"].status == "pass" and report["train.overfit"].status == "pass"


def test_labels_in_range_pass():
    assert doctor(mlp(), blobs(), checks=["data.labels"])["data.labels"].status == "pass"


def test_nan_in_the_data_fails_and_names_the_row():
    X, y = blobs()
    X = X.clone()
    X[5, 3] = float("nan")
    X[9, 0] = float("inf")
    report = doctor(mlp(), (X, y), checks=["data", "model.output", "train.gradients"])
    check = report["data.finite"]
    assert check.status == "fail" and "1 NaN and 1 Inf" in check.message and "row 5" in check.message
    assert report["model.output"].status == "pass" and report["train.gradients"].status == "pass"
    assert doctor(mlp(), blobs(), checks=["data.finite"])["data.finite"].status == "pass"


def test_log_of_a_negative_activation_names_the_module_in_the_forward_pass():
    model = nn.Sequential(OrderedDict(fc=nn.Linear(FEATURES, 16), log=Lambda(torch.log), out=nn.Linear(16, CLASSES)))
    report = doctor(model, blobs(), checks=["train.nan_origin", "train.lr_find"])
    check = report["train.nan_origin"]
    assert check.status == "fail" and "forward pass" in check.message and "'log'" in check.message
    assert "train.lr_find" not in report  # skipped: no range test from a NaN loss
    assert doctor(mlp(), blobs(), checks=["train.nan_origin"])["train.nan_origin"].status == "pass"


def test_sqrt_at_zero_names_the_module_in_the_backward_pass():
    model = nn.Sequential(OrderedDict(fc=nn.Linear(FEATURES, 16), relu=nn.ReLU(), root=Lambda(torch.sqrt), out=nn.Linear(16, CLASSES)))
    check = doctor(model, blobs(), checks=["train.nan_origin"])["train.nan_origin"]
    assert check.status == "fail" and "backward pass" in check.message and "'root'" in check.message


def test_nan_from_plain_code_names_the_enclosing_forward():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.out = nn.Linear(FEATURES, 16), nn.Linear(16, CLASSES)

        def forward(self, x):
            return self.out(torch.log(self.fc(x)))

    check = doctor(Functional(), blobs(), checks=["train.nan_origin"])["train.nan_origin"]
    assert check.status == "fail" and "forward() of the model" in check.message and "'out'" in check.message


def test_validation_rows_copied_from_training_are_leakage():
    X, y = blobs()
    report = doctor(mlp(), (X, y), val=(X[:40].clone(), y[:40]), checks=["data.leakage"])
    check = report["data.leakage"]
    assert check.status == "fail" and "40 of 40 val rows" in check.message
    Xv, yv = blobs(60, seed=1)
    assert doctor(mlp(), (X, y), val=(Xv, yv), checks=["data.leakage"])["data.leakage"].status == "pass"
    Xv[0] = X[7]  # one natural duplicate: a warning, not a failure
    assert doctor(mlp(), (X, y), val=(Xv, yv), checks=["data.leakage"])["data.leakage"].status == "warn"


def test_leakage_needs_validation_data():
    report = doctor(mlp(), blobs(), checks=["data.leakage"])
    assert report.checks == [] and report.skipped[0][0] == "data.leakage" and report.ok


def test_shared_rows_ignores_the_sign_of_zero_and_is_fast_on_100k_rows():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((100_000, 64)).astype(np.float32)
    val = np.concatenate([train[:500], rng.standard_normal((19_500, 64)).astype(np.float32)])
    val[:500, 0] = np.where(val[:500, 0] == 0, -0.0, val[:500, 0])
    started = time.perf_counter()
    shared, repeats = shared_rows(train, val)
    elapsed = time.perf_counter() - started
    assert int(shared.sum()) == 500 and bool(shared[:500].all()) and repeats == 0
    assert elapsed < 2.0, f"hashing 100k rows took {elapsed:.2f} s"
    odd = np.zeros((3, 13), dtype=np.float32)  # 52 bytes a row: padded to whole 8-byte words
    odd[1, 12] = -0.0
    assert shared_rows(odd, odd[1:2])[0].tolist() == [True]


def test_learning_rate_of_10_diverges_and_the_finder_suggests_a_lower_one():
    train, val, outputs, loss = sklearn_task("digits")
    report = doctor(mlp(64, outputs), train, lr=10.0, checks=["train.lr_find"], lr_find_steps=40)
    check = report["train.lr_find"]
    assert check.status == "fail" and "diverges" in check.message
    result = report.lr_find
    assert result is not None and result.suggestion is not None and result.suggestion < 1.0
    assert result.diverged_lr is not None and result.diverged_lr <= 10.0
    assert result.current_lr == 10.0
    healthy = doctor(mlp(64, outputs), train, lr=result.suggestion, checks=["train.lr_find"], lr_find_steps=40)
    assert healthy["train.lr_find"].status == "pass"


def test_lr_find_alone_leaves_model_optimizer_and_rng_untouched(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    result = lr_find(model, blobs(), loss=nn.CrossEntropyLoss(), optimizer=optimizer, num_steps=30, plot=tmp_path / "plots" / "lr.png")
    assert isinstance(result, LRFindResult)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) <= 30
    assert all(a < b for a, b in zip(result.lrs, result.lrs[1:]))
    assert result.suggestion is not None and result.current_lr == 0.05
    assert (tmp_path / "plots" / "lr.png").stat().st_size > 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert optimizer.state_dict()["state"] == {} and torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ValueError, match="start_lr"):
        lr_find(model, blobs(), start_lr=1.0, end_lr=0.1)


def test_a_model_that_cannot_overfit_one_batch_fails():
    model = mlp(FEATURES, CLASSES, Lambda(lambda x: x * 0.0))  # the output is zeroed
    report = doctor(model, blobs(), checks=["train"], **FAST)
    check = report["train.overfit"]
    assert check.status == "fail" and "went from 1.099 to 1.099" in check.message
    assert report["train.gradients"].status == "fail" and "zero gradient" in report["train.gradients"].message
    assert report["train.lr_find"].status == "warn" and report.lr_find.suggestion is None
    assert doctor(mlp(), blobs(), checks=["train.overfit"], **FAST)["train.overfit"].status == "pass"


def test_class_imbalance_warns_and_suggests_weights():
    X, y = blobs(300)
    y = torch.where(torch.arange(300) < 280, torch.zeros_like(y), y)  # 280 of class 0
    check = doctor(mlp(), (X, y), checks=["data.balance"])["data.balance"]
    assert check.status == "warn" and "weight=" in check.advice
    assert doctor(mlp(), blobs(), checks=["data.balance"])["data.balance"].status == "pass"


def test_constant_and_unscaled_features_warn():
    X, y = datasets.load_wine(return_X_y=True)  # raw: proline ~ 1000, hue ~ 1
    X = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    report = doctor(mlp(14), (X, y), checks=["data.variance", "data.scale"])
    assert report["data.variance"].status == "warn" and "feature 13" in report["data.variance"].message
    assert report["data.scale"].status == "warn" and "StandardScaler" in report["data.scale"].advice
    all_constant = doctor(mlp(), (torch.ones(50, FEATURES), torch.arange(50) % 3), checks=["data.variance"])
    assert all_constant["data.variance"].status == "fail"


def test_overconfident_initialization_warns():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(50)
    check = doctor(model, blobs(), checks=["model.initial_loss"])["model.initial_loss"]
    assert check.status == "warn" and "chance level 1.099" in check.message


def test_unscaled_regression_target_warns_on_initial_loss():
    X, _ = blobs()
    y = (150 + 50 * X[:, :1]).clone()
    check = doctor(mlp(FEATURES, 1), (X, y), loss="mse", checks=["model.initial_loss"])["model.initial_loss"]
    assert check.status == "warn" and "mean(y)" in check.advice


def test_train_eval_consistency():
    class FunctionalDropout(nn.Module):  # the classic bug: F.dropout is active in eval mode too
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(FEATURES, CLASSES)

        def forward(self, x):
            return self.fc(F.dropout(x, 0.5))

    class Branching(nn.Module):  # changes with the mode, with no dropout or batch norm to explain it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(FEATURES, CLASSES)

        def forward(self, x):
            return self.fc(x) * (2.0 if self.training else 1.0)

    def status(model):
        return doctor(model, blobs(), checks=["model.train_eval"])["model.train_eval"]

    assert status(FunctionalDropout()).status == "warn" and "eval mode" in status(FunctionalDropout()).message
    assert status(Branching()).status == "warn"
    explained = status(nn.Sequential(nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, 3)))
    assert explained.status == "pass" and "Dropout" in explained.message


def test_output_shape_that_broadcasts_against_the_targets_fails():
    X, _ = blobs()
    check = doctor(mlp(FEATURES, 1), (X, X[:, 0].clone()), loss="mse", checks=["model.output"])["model.output"]
    assert check.status == "fail" and "same shape" in check.message and "y.reshape(-1, 1)" in check.message


def test_wrong_input_width_is_a_failing_check():
    report = doctor(mlp(5), blobs(), **FAST)
    assert report["model.output"].status == "fail" and "mat1" in report["model.output"].message
    assert not report.ok and "train.overfit" not in report  # skipped, with the reason
    assert any(name == "train.overfit" for name, _ in report.skipped)


def test_an_exception_inside_a_check_becomes_a_failure():
    class Flaky(nn.Module):
        """Works in eval mode, raises in train mode: the training checks hit the error."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(FEATURES, CLASSES)

        def forward(self, x):
            if self.training:
                raise RuntimeError("boom in training mode")
            return self.fc(x)

    report = doctor(Flaky(), blobs(), **FAST)
    assert report["train.gradients"].status == "fail"
    assert "RuntimeError: boom in training mode" in report["train.gradients"].message
    assert report["model.output"].status == "pass"


def test_unreadable_data_is_reported_not_raised():
    report = doctor(mlp(), "data.csv", **FAST)
    assert report["data.shapes"].status == "fail" and "pair (X, y)" in report["data.shapes"].message
    assert not report.ok

    class Broken(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            raise KeyError(i)

    report = doctor(mlp(), Broken(), **FAST)
    assert report["data.shapes"].status == "fail" and "KeyError" in report["data.shapes"].message
    X, y = blobs()
    report = doctor(mlp(), (X, y[:-5]), **FAST)
    assert report["data.shapes"].status == "fail" and "240 rows but y has 235" in report["data.shapes"].message
    report = doctor(mlp(), (X, y.float()), **FAST)
    assert report["data.shapes"].status == "fail" and "y.long()" in report["data.shapes"].advice
    report = doctor(mlp(), (X[:0], y[:0]), **FAST)
    assert report["data.shapes"].status == "fail" and "empty" in report["data.shapes"].message
    report = doctor(mlp(), DataLoader(TensorDataset(X), batch_size=32), **FAST)  # inputs only
    assert report["data.shapes"].status == "fail" and "no targets" in report["data.shapes"].message
    assert report["data.finite"].status == "pass"  # the input checks still run
    report = doctor(mlp(), (X, y), val=(X[:20, :7], y[:20]), checks=["data.shapes"])
    assert report["data.shapes"].status == "fail" and "val samples have shape (7,)" in report["data.shapes"].message


def test_targets_that_do_not_fit_the_loss_fail_once_and_skip_the_rest():
    X, y = blobs()
    report = doctor(mlp(), (X, y.reshape(-1, 1)), **FAST)
    assert report["model.output"].status == "fail" and "y.reshape(-1)" in report["model.output"].message
    assert [c.name for c in report.failed] == ["model.output"]
    reasons = dict(report.skipped)
    assert "see model.output" in reasons["train.overfit"] and "see model.output" in reasons["train.lr_find"]


def test_datasets_and_dataloaders_are_read():
    X, y = blobs()
    Xv, yv = blobs(60, seed=1)
    loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)
    report = doctor(mlp(), loader, val=TensorDataset(Xv, yv), **FAST)
    assert report.ok, str(report)
    assert "X (240, 8)" in report["data.shapes"].message and "val X (60, 8)" in report["data.shapes"].message


def test_non_tensor_inputs_run_the_model_checks_only():
    class DictData(Dataset):
        def __init__(self) -> None:
            self.X, self.y = blobs()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"features": self.X[i]}, self.y[i]

    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, batch):
            return self.net(batch["features"])

    report = doctor(DictModel(), DictData(), **FAST)
    assert report.ok, str(report)
    assert report["train.overfit"].status == "pass" and "data.finite" not in report


@pytest.mark.parametrize("seed", [0, None])
def test_the_model_rng_and_optimizer_are_left_exactly_as_found(seed):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    model[1].eval()  # mixed modes, per submodule
    model[4].bias.requires_grad_(False)
    model[0].weight.grad = torch.full_like(model[0].weight, 0.5)
    optimizer = torch.optim.Adam(p for p in model.parameters() if p.requires_grad)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    report = doctor(model, blobs(), val=blobs(60, seed=1), optimizer=optimizer, seed=seed, **FAST)

    assert report.ok, str(report)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 0.5)) and model[4].weight.grad is None
    assert optimizer.state_dict()["state"] == {}
    assert random.getstate() == rng[0]
    numpy_state = np.random.get_state()
    assert numpy_state[0] == rng[1][0] and np.array_equal(numpy_state[1], rng[1][1]) and numpy_state[2:] == rng[1][2:]
    assert torch.equal(torch.get_rng_state(), rng[2])


def test_a_model_that_cannot_be_deep_copied_is_checked_in_place_and_restored():
    model = mlp()
    model.cache = model[0].weight * 2  # a non-leaf tensor: deepcopy refuses it
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = doctor(model, blobs(), checks=["train"], **FAST)
    assert report["train.overfit"].status == "pass"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.training and all(p.grad is None for p in model.parameters())


def test_report_prints_as_a_table_and_is_saved_as_json(tmp_path):
    model = mlp(FEATURES, CLASSES, nn.Softmax(dim=1))
    report = doctor(model, blobs(), run_dir=tmp_path / "run", **FAST)
    text = str(report)
    assert text.splitlines()[0].startswith("gradloop doctor: PROBLEMS FOUND - ")
    assert any(line.startswith("FAIL  model.loss_fit") for line in text.splitlines())
    assert "-> remove the final Softmax" in text and "not run: no validation data given" in text
    saved = json.loads((tmp_path / "run" / "doctor.json").read_text())
    assert saved["ok"] is False and saved == json.loads(report.to_json())
    assert {c["name"] for c in saved["checks"]} == {c.name for c in report.checks}
    assert set(saved["checks"][0]) == {"name", "status", "message", "advice"}
    assert saved["lr_find"]["suggestion"] == pytest.approx(report.lr_find.suggestion)
    assert (tmp_path / "run" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert all(c.status in ("pass", "warn", "fail") and c.message for c in report.checks)


def test_checks_can_be_selected_by_name_or_group():
    report = doctor(mlp(), blobs(), checks=["data", "model.output"])
    assert [c.name for c in report.checks] == [n for n in CHECK_NAMES if n.startswith("data.") and n != "data.leakage"] + ["model.output"]
    with pytest.raises(ValueError, match="unknown check 'dat'"):
        doctor(mlp(), blobs(), checks=["dat"])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(loss="crossentropyy"), ValueError),
        (dict(optimizer="adamm"), ValueError),
        (dict(batch_size=0), ValueError),
        (dict(lr=-1.0), ValueError),
        (dict(overfit_steps=0), ValueError),
    ],
)
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(error):
        doctor(mlp(), blobs(), **kwargs)
    with pytest.raises(TypeError, match="nn.Module"):
        doctor("not a model", blobs())


# --------------------------------------------------------------------------- hooked up in the package
def test_gl_doctor_is_the_doctor():
    assert gl.doctor is doctor and gl.DoctorReport is DoctorReport and gl.lr_find is lr_find


def test_trainer_find_lr_plots_into_the_run_dir_and_changes_nothing(tmp_path):
    model = mlp()
    trainer = gl.Trainer(model, optimizer="sgd", lr=0.05, run_dir=tmp_path, default_callbacks=False)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = trainer.find_lr(blobs(), num_steps=30)
    assert isinstance(result, LRFindResult) and result.suggestion is not None and result.current_lr == 0.05
    assert (tmp_path / "lr_find.png").exists()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert trainer.optimizer.state_dict()["state"] == {}


def test_a_model_with_lazy_modules_is_checked_and_left_lazy():
    X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    y = (X[:, 0] > 0).long()
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 2))
    report = doctor(model, (X, y), lr_find_steps=30)
    assert report.ok
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)
