"""Bad input fails fast: a ValueError/TypeError before the first optimizer step, whose message
names the offending value and the fix. After each failure the weights are untouched, no gradient
was computed and the optimizer has taken no step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradloop as gl
from helpers import PairDataset

FEATURES, CLASSES, N = 4, 3, 40
BAD = (ValueError, TypeError)


def data(n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def make_model(outputs: int = CLASSES, features: int = FEATURES) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, outputs))


class Untouched:
    """Snapshots a model and an Adam instance; `check()` asserts no step and no backward happened."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
        self.weights = copy.deepcopy(model.state_dict())

    def check(self) -> None:
        for name, value in self.model.state_dict().items():
            assert torch.equal(value, self.weights[name]), f"{name} changed although fit failed"
        assert all(p.grad is None for p in self.model.parameters()), "a backward pass ran before the error"
        assert not self.optimizer.state, "the optimizer stepped before the error"


def fails_in_fit(train, exc, match, *, model=None, val=None, fit_kwargs=None, **trainer_kwargs):
    model = model if model is not None else make_model()
    guard = Untouched(model)
    trainer_kwargs.setdefault("loss", "cross_entropy")
    trainer = gl.Trainer(model, optimizer=guard.optimizer, max_epochs=2, default_callbacks=False, **trainer_kwargs)
    with pytest.raises(exc, match=match):
        trainer.fit(train, val=val, **(fit_kwargs or {}))
    guard.check()


def fails_in_trainer(exc, match, model=None, **trainer_kwargs):
    model = model if model is not None else make_model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(exc, match=match):
        gl.Trainer(model, default_callbacks=False, **trainer_kwargs)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


# ----------------------------------------------------------------------------- lengths
def test_mismatched_x_y_lengths():
    X, y = data()
    fails_in_fit((X, y[:-1]), ValueError, r"X has 40 samples but y has 39.*one row per sample")


def test_mismatched_lengths_numpy():
    X, y = data()
    fails_in_fit((X.numpy(), y.numpy()[:30]), ValueError, r"40 samples but y has 30")


def test_mismatched_lengths_in_validation_data():
    X, y = data()
    Xv, yv = data(20, seed=1)
    fails_in_fit((X, y), ValueError, r"val X has 20 samples but y has 19", val=(Xv, yv[:-1]))


def test_train_data_without_targets():
    X, _ = data()
    fails_in_fit(X, ValueError, r"no targets.*pair \(X, y\)")
    fails_in_fit((X,), ValueError, r"no targets.*pair \(X, y\)")


def test_train_data_of_an_unknown_kind():
    fails_in_fit("data.csv", TypeError, r"pair \(X, y\).*Dataset.*DataLoader.*received str")


# ----------------------------------------------------------------------------- labels vs outputs
@pytest.mark.parametrize("bad_label", [3, 7, -1], ids=["just-above", "far-above", "negative"])
def test_labels_outside_the_output_range(bad_label):
    X, y = data()
    y = y.clone()
    y[-1] = bad_label  # the last row: in the last batch, beyond any look at the first samples
    fix = r"give the model \d+ outputs or map the labels to 0\.\.2"
    fails_in_fit((X, y), ValueError, rf"labels must lie in \[0, 3\).*contains {bad_label}\b.*{fix}", fit_kwargs={"batch_size": 8})


def test_labels_outside_the_output_range_numpy_int32():
    X, y = data()
    y = y.numpy().astype(np.int32)
    y[5] = 3
    fails_in_fit((X.numpy(), y), ValueError, r"contains 3.*give the model 4 outputs")


def test_labels_outside_the_output_range_in_validation():
    X, y = data()
    Xv, yv = data(20, seed=1)
    yv = yv.clone()
    yv[13] = 4
    fails_in_fit((X, y), ValueError, r"val labels must lie in \[0, 3\).*contains 4.*give the model 5 outputs", val=(Xv, yv))


def test_labels_outside_the_output_range_in_a_dataset():
    X, y = data()
    y = y.clone()
    y[0] = 5
    fails_in_fit(PairDataset(X, y), ValueError, r"contains 5.*give the model 6 outputs")


@pytest.mark.parametrize("wrap", ["tensordataset", "dataloader"])
def test_labels_outside_the_output_range_late_in_a_tensor_dataset(wrap):
    """A TensorDataset holds its labels in memory: a bad label in its last batch is found before the
    first step, exactly as for (X, y) tensors — not after several optimizer steps."""
    X, y = data()
    y = y.clone()
    y[-1] = 5
    train = TensorDataset(X, y) if wrap == "tensordataset" else DataLoader(TensorDataset(X, y), batch_size=8)
    fails_in_fit(
        train,
        ValueError,
        r"labels must lie in \[0, 3\).*contains 5.*give the model 6 outputs",
        fit_kwargs={"batch_size": 8, "shuffle": False},
    )


def test_five_outputs_for_ten_classes():
    X, _ = data()
    y = torch.arange(N) % 10
    fails_in_fit((X, y), ValueError, r"lie in \[0, 5\).*contains 9.*give the model 10 outputs", model=make_model(outputs=5))


def test_validate_checks_label_range_too():
    model = make_model()
    trainer = gl.Trainer(model, default_callbacks=False)
    X, y = data()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*contains 3"):
        trainer.validate((X, torch.where(y == 0, 3, y)))


def test_float_labels_with_cross_entropy():
    X, y = data()
    fails_in_fit((X, y.float()), ValueError, r"cross_entropy needs integer class labels.*float32.*y\.long\(\)")


def test_class_index_labels_with_wrong_rank():
    X, _ = data()
    y = torch.zeros(N, CLASSES, dtype=torch.long)
    fails_in_fit((X, y), ValueError, r"outputs of shape \(N, C\) for labels of shape \(N,\).*nn\.Linear\(\.\.\., num_classes\)")


def test_integer_targets_with_bce_with_logits():
    X, y = data()
    fails_in_fit(
        (X, (y > 0).long().reshape(-1, 1)),
        ValueError,
        r"bce_with_logits needs float targets.*y\.float\(\)",
        model=make_model(outputs=1),
        loss="bce_with_logits",
    )


# ----------------------------------------------------------------------------- output shape vs targets
def test_n_by_1_output_with_mse_on_n_targets_is_an_error_not_broadcasting():
    X, _ = data()
    y = torch.randn(N)
    fails_in_fit(
        (X, y),
        ValueError,
        r"mse needs outputs and targets of the same shape.*reshape y to .*reshape\(-1, 1\)",
        model=make_model(outputs=1),
        loss="mse",
    )


def test_n_by_1_output_with_mse_on_n_targets_in_a_dataset():
    X, _ = data()
    fails_in_fit(
        PairDataset(X, torch.randn(N)),
        ValueError,
        r"mse needs outputs and targets of the same shape",
        model=make_model(outputs=1),
        loss="mse",
    )


def test_output_columns_differ_from_target_columns():
    X, _ = data()
    y = torch.randn(N, 1)
    fails_in_fit((X, y), ValueError, r"same shape.*as many outputs as y has columns", model=make_model(outputs=2), loss="mse")


@pytest.mark.parametrize("method", ["validate", "test"])
def test_evaluation_rejects_mismatched_regression_shapes(method):
    model = make_model(outputs=1)
    trainer = gl.Trainer(model, loss="mse", default_callbacks=False)
    X, _ = data()
    with pytest.raises(ValueError, match=r"mse needs outputs and targets of the same shape"):
        getattr(trainer, method)((X, torch.randn(N)))


def test_metric_that_cannot_compare_outputs_and_targets():
    X, y = data()
    fails_in_fit((X, y), ValueError, r"metric 'mae' cannot compare model outputs", metrics=["mae"])


# ----------------------------------------------------------------------------- model vs inputs
def test_first_layer_does_not_accept_the_input_width():
    X, y = data()
    fails_in_fit(
        (X, y), ValueError, r"cannot process the train inputs.*\(\d+, 4\).*first layer accept", model=make_model(features=FEATURES + 3)
    )


def test_first_layer_does_not_accept_the_input_width_dataloader():
    X, y = data()
    fails_in_fit(
        DataLoader(TensorDataset(X, y), batch_size=8),
        ValueError,
        r"cannot process the train inputs.*first layer",
        model=make_model(features=FEATURES + 3),
    )


def test_model_returning_a_non_tensor():
    class Tupled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(FEATURES, CLASSES)

        def forward(self, x):
            return {"logits": self.linear(x)}

    X, y = data()
    fails_in_fit((X, y), TypeError, r"must return a tensor.*dict", model=Tupled())


# ----------------------------------------------------------------------------- empty data
def test_empty_tensors():
    fails_in_fit((torch.empty(0, FEATURES), torch.empty(0, dtype=torch.long)), ValueError, r"train data is empty.*at least one sample")


def test_empty_numpy_arrays():
    fails_in_fit((np.zeros((0, FEATURES)), np.zeros(0, dtype=np.int64)), ValueError, r"empty.*at least one sample")


def test_empty_dataset():
    fails_in_fit(
        PairDataset(torch.empty(0, FEATURES), torch.empty(0, dtype=torch.long)), ValueError, r"train dataset is empty.*at least one sample"
    )


def test_empty_dataloader():
    loader = DataLoader(TensorDataset(torch.empty(0, FEATURES), torch.empty(0, dtype=torch.long)), batch_size=8)
    fails_in_fit(loader, ValueError, r"train dataset is empty")


def test_empty_validation_data():
    fails_in_fit(data(), ValueError, r"val data is empty", val=(torch.empty(0, FEATURES), torch.empty(0, dtype=torch.long)))


def test_empty_data_in_evaluation():
    trainer = gl.Trainer(make_model(), default_callbacks=False)
    with pytest.raises(ValueError, match="empty"):
        trainer.validate((torch.empty(0, FEATURES), torch.empty(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="empty"):
        trainer.predict(torch.empty(0, FEATURES))


# ----------------------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_inputs(value):
    X, y = data()
    X = X.clone()
    X[33, 2] = value
    fails_in_fit((X, y), ValueError, r"train X contains NaN or Inf \(first at row 33\).*remove or impute")


def test_nan_in_numpy_inputs():
    X, y = data()
    X = X.double().numpy().copy()
    X[7, 0] = np.nan
    fails_in_fit((X, y.numpy()), ValueError, r"NaN.*row 7")


def test_nan_in_validation_inputs():
    Xv, yv = data(20, seed=1)
    Xv = Xv.clone()
    Xv[4, 1] = float("nan")
    fails_in_fit(data(), ValueError, r"val X contains NaN.*row 4", val=(Xv, yv))


def test_nan_in_regression_targets():
    X, _ = data()
    y = torch.randn(N, 1)
    y[12, 0] = float("nan")
    fails_in_fit((X, y), ValueError, r"y contains NaN.*remove those samples", model=make_model(outputs=1), loss="mse")


# ----------------------------------------------------------------------------- names
def test_unknown_optimizer_name():
    fails_in_trainer(ValueError, r"unknown optimizer 'adamm' \(did you mean 'adam'\?\).*use one of .*sgd", optimizer="adamm")


def test_unknown_optimizer_name_without_close_match():
    fails_in_trainer(ValueError, r"unknown optimizer 'lbfgs'.*use one of", optimizer="lbfgs")


def test_unknown_loss_name():
    fails_in_trainer(ValueError, r"unknown loss 'cross_entropi' \(did you mean 'cross_entropy'\?\).*callable", loss="cross_entropi")


def test_unknown_metric_name():
    fails_in_trainer(ValueError, r"unknown metric 'acuracy'.*'accuracy'.*callable", metrics=["acuracy"])


def test_lambda_metric_without_a_name():
    fails_in_trainer(ValueError, r"no usable name.*def my_metric", metrics=[lambda o, t: (o.argmax(1) == t).float().mean()])


def test_metric_of_the_wrong_type():
    fails_in_trainer(TypeError, r"metrics must be names or callables.*42", metrics=[42])


def test_metric_named_like_a_reserved_log():
    def loss(outputs, targets):
        return outputs.mean()

    fails_in_trainer(ValueError, r"metric name 'loss' is reserved.*rename", metrics=[loss])


def test_loss_of_the_wrong_type():
    fails_in_trainer(TypeError, r"loss must be a name.*callable.*loss=3", loss=3)


def test_optimizer_of_the_wrong_type():
    fails_in_trainer(TypeError, r"optimizer must be a name.*received: optimizer=1\.5", optimizer=1.5)


def test_optimizer_over_another_models_parameters():
    other = make_model()
    fails_in_trainer(ValueError, r"not the model's.*model\.parameters\(\)", optimizer=torch.optim.SGD(other.parameters(), lr=0.1))


def test_optimizer_factory_returning_something_else():
    fails_in_trainer(TypeError, r"factory must return a torch\.optim\.Optimizer.*list", optimizer=lambda params: list(params))


def test_sgd_by_name_without_lr():
    fails_in_trainer(ValueError, r"'sgd' needs a learning rate.*lr=", optimizer="sgd", lr=None)


@pytest.mark.parametrize("lr", [0, -0.1, "0.01"])
def test_bad_lr(lr):
    fails_in_trainer(
        BAD, rf"lr must be a positive number; received: lr={lr!r}".replace("(", r"\(").replace(")", r"\)"), optimizer="adam", lr=lr
    )


def test_not_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module; received function"):
        gl.Trainer(lambda x: x)


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("batch_size", [0, -4, 2.5, "32", True])
def test_bad_batch_size(batch_size):
    fails_in_fit(
        data(), BAD, rf"batch_size must be a positive integer; received: batch_size={batch_size!r}", fit_kwargs={"batch_size": batch_size}
    )


@pytest.mark.parametrize("method", ["validate", "test", "predict"])
@pytest.mark.parametrize("batch_size", [0, -4, 2.5])
def test_bad_batch_size_in_evaluation(method, batch_size):
    trainer = gl.Trainer(make_model(), default_callbacks=False)
    X, y = data()
    with pytest.raises(BAD, match=rf"batch_size must be a positive integer; received: batch_size={batch_size!r}"):
        getattr(trainer, method)((X, y), batch_size=batch_size)


@pytest.mark.parametrize("name", ["max_epochs", "max_steps", "accumulate_grad_batches"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "10", False])
def test_bad_counts(name, value):
    expected = "a positive integer or None" if name == "max_steps" else "a positive integer"
    fails_in_trainer(BAD, rf"{name} must be {expected}; received: {name}={value!r}", **{name: value})


@pytest.mark.parametrize("value", [0, -1.0, "1.0"])
def test_bad_grad_clip_norm(value):
    fails_in_trainer(BAD, rf"grad_clip_norm must be a positive number or None; received: grad_clip_norm={value!r}", grad_clip_norm=value)


def test_bad_seed():
    fails_in_trainer(TypeError, r"seed must be an int or None; received: seed='42'", seed="42")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_unknown_device_string(device):
    fails_in_trainer(ValueError, rf"unknown device '{device}'.*use 'auto', 'cpu', 'cuda'", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda")])
def test_cuda_device_without_cuda(device):
    fails_in_trainer(ValueError, r"CUDA is not available.*device='auto' or 'cpu'", device=device)


def test_device_of_the_wrong_type():
    fails_in_trainer(TypeError, r"device must be 'auto'.*received: device=3\.5", device=3.5)


@pytest.mark.parametrize("precision", ["64", "fp8", "bf32", 64])
def test_unknown_precision(precision):
    fails_in_trainer(ValueError, rf"unknown precision {precision!r}: use one of '32', 'bf16-mixed', '16-mixed'", precision=precision)


# ----------------------------------------------------------------------------- callbacks
def test_unknown_callback_hook_name():
    class Typo(gl.Callback):
        def on_epoch_ended(self, trainer, logs):
            pass

    fails_in_trainer(TypeError, r"Typo\.on_epoch_ended is not a gradloop hook \(did you mean 'on_epoch_end'\?\)", callbacks=[Typo()])


def test_unknown_callback_hook_without_close_match():
    class Odd(gl.Callback):
        def on_gradient_magic(self, trainer):
            pass

    fails_in_trainer(TypeError, r"on_gradient_magic is not a gradloop hook.*hooks are: on_fit_start", callbacks=[Odd()])


def test_callback_that_is_not_a_callback():
    class NotACallback:
        def on_epoch_end(self, trainer, logs):
            pass

    fails_in_trainer(TypeError, r"callbacks must be gl\.Callback instances", callbacks=[NotACallback()])


def test_resume_last_without_run_dir():
    fails_in_fit(data(), ValueError, r"resume='last' needs a run_dir", fit_kwargs={"resume": "last"})


# ----------------------------------------------------------------------------- self-check of the guard
def test_guard_detects_a_step():
    """The `Untouched` guard used above really notices training (so its checks can fail)."""
    model = make_model()
    guard = Untouched(model)
    gl.Trainer(model, optimizer=guard.optimizer, max_epochs=1, default_callbacks=False).fit(data())
    with pytest.raises(AssertionError):
        guard.check()
