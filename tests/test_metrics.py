"""History, logged metrics and evaluation results against straightforward reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import gradloop as gl

FEATURES, CLASSES = 4, 3
N, BATCH = 50, 16  # batches of 16, 16, 16 and 2: the last partial batch must count with weight 2


def classification(n: int = N, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def regression(n: int = N, seed: int = 0, outputs: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, FEATURES, generator=g)
    y = X[:, :outputs] * 2.0 + 0.5 * torch.randn(n, outputs, generator=g)
    return X, y


def frozen_optimizer(params):
    """lr=0: parameters do not move, so every batch sees the same model as the full-batch reference."""
    return torch.optim.SGD(params, lr=0.0)


def classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, CLASSES))


def trainer_for(model, **kwargs):
    kwargs.setdefault("optimizer", "adam")
    kwargs.setdefault("loss", "cross_entropy")
    kwargs.setdefault("metrics", ["accuracy"])
    return gl.Trainer(model, default_callbacks=False, **kwargs)


def full_batch(model, X, y, loss_fn=nn.functional.cross_entropy):
    with torch.no_grad():
        out = model(X)
        return out, float(loss_fn(out, y))


def batch_means(model, X, y, fn, batch=BATCH):
    with torch.no_grad():
        return [float(fn(model(X[i : i + batch]), y[i : i + batch])) for i in range(0, len(X), batch)]


def ref_accuracy(out, y) -> float:
    return float((out.argmax(dim=1) == y).double().mean())


# ----------------------------------------------------------------------------- history
def test_history_keys_lengths_and_types():
    X, y = classification()
    trainer = trainer_for(classifier(), max_epochs=3)
    history = trainer.fit((X, y), val=classification(20, seed=1), batch_size=BATCH)
    assert isinstance(history, gl.History)
    assert history is trainer.history
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"} <= set(history)
    for name in history:
        assert len(history[name]) == 3, name
        assert all(type(v) is float for v in history[name]), (name, history[name])
    assert len(history.epochs) == 3
    assert all(isinstance(e, dict) for e in history.epochs)
    assert [e["loss"] for e in history.epochs] == history["loss"]
    assert all(t > 0 for t in history["time"])
    assert all(math.isfinite(v) for v in history["loss"] + history["val_loss"])


def test_callback_logs_are_python_floats():
    seen: list[tuple[str, dict]] = []

    class Spy(gl.Callback):
        def on_validation_end(self, trainer, logs):
            seen.append(("validation", dict(logs)))

        def on_epoch_end(self, trainer, logs):
            seen.append(("epoch", dict(logs)))

    X, y = classification()
    trainer_for(classifier(), max_epochs=2, callbacks=[Spy()]).fit((X, y), val=classification(20, seed=1), batch_size=BATCH)
    assert [kind for kind, _ in seen] == ["validation", "epoch"] * 2
    for kind, logs in seen:
        assert logs and all(type(v) is float for v in logs.values()), (kind, logs)
    assert set(seen[0][1]) == {"val_loss", "val_accuracy"}
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"} <= set(seen[1][1])


def test_history_without_validation_has_no_val_keys():
    X, y = classification()
    history = trainer_for(classifier(), max_epochs=2).fit((X, y), batch_size=BATCH)
    assert {"loss", "accuracy", "lr", "time"} <= set(history)
    assert not [k for k in history if k.startswith("val_")]
    with pytest.raises(KeyError, match="val_loss"):
        history["val_loss"]


def test_training_decreases_the_loss():
    X, y = classification(200)
    history = trainer_for(classifier(), optimizer="adam", lr=0.05, max_epochs=15).fit((X, y), batch_size=32)
    assert history["loss"][-1] < history["loss"][0]
    assert history["accuracy"][-1] > history["accuracy"][0]


# ----------------------------------------------------------------------------- epoch metrics vs reference
def test_train_and_val_metrics_match_full_batch_reference_with_partial_last_batch():
    model = classifier()
    X, y = classification()
    Xv, yv = classification(37, seed=1)  # val batches 16, 16, 5
    trainer = trainer_for(model, optimizer=frozen_optimizer, max_epochs=2)
    history = trainer.fit((X, y), val=(Xv, yv), batch_size=BATCH, shuffle=True)

    out, loss = full_batch(model, X, y)
    vout, vloss = full_batch(model, Xv, yv)
    for epoch in range(2):
        assert history["loss"][epoch] == pytest.approx(loss, rel=1e-5)
        assert history["accuracy"][epoch] == pytest.approx(ref_accuracy(out, y), abs=1e-6)
        assert history["val_loss"][epoch] == pytest.approx(vloss, rel=1e-5)
        assert history["val_accuracy"][epoch] == pytest.approx(ref_accuracy(vout, yv), abs=1e-6)

    # the reference distinguishes size-weighted from unweighted means of batch means
    unweighted = float(np.mean(batch_means(model, X, y, nn.functional.cross_entropy)))
    assert unweighted != pytest.approx(loss, rel=1e-5)
    unweighted_val = float(np.mean(batch_means(model, Xv, yv, nn.functional.cross_entropy)))
    assert unweighted_val != pytest.approx(vloss, rel=1e-5)


def test_train_loss_is_the_mean_over_the_epoch_of_losses_seen_while_training():
    """A moving model: the epoch loss is the size-weighted mean of each batch's loss as computed at
    that batch (recorded by a callback from the loss tensor it receives)."""
    X, y = classification()
    seen: list[float] = []

    class Record(gl.Callback):
        def on_train_batch_end(self, trainer, loss):
            seen.append(float(loss))

    history = trainer_for(classifier(), optimizer="sgd", lr=0.5, max_epochs=1, callbacks=[Record()]).fit(
        (X, y), batch_size=BATCH, shuffle=False
    )
    sizes = [16, 16, 16, 2]
    assert len(seen) == 4
    assert history["loss"][0] == pytest.approx(sum(size * loss for size, loss in zip(sizes, seen)) / N, rel=1e-6)


def test_validate_and_test_return_floats_matching_reference():
    model = classifier()
    trainer = trainer_for(model)
    Xv, yv = classification(37, seed=1)
    out, loss = full_batch(model, Xv, yv)
    for batch_size in (None, 5, 100):
        result = trainer.validate((Xv, yv), batch_size=batch_size)
        assert set(result) == {"val_loss", "val_accuracy"}
        assert all(type(v) is float for v in result.values())
        assert result["val_loss"] == pytest.approx(loss, rel=1e-5)
        assert result["val_accuracy"] == pytest.approx(ref_accuracy(out, yv), abs=1e-6)
        tested = trainer.test((Xv, yv), batch_size=batch_size)
        assert set(tested) == {"test_loss", "test_accuracy"}
        assert tested["test_loss"] == pytest.approx(result["val_loss"], rel=1e-9)
        assert tested["test_accuracy"] == result["val_accuracy"]


@pytest.mark.parametrize("kind", ["dataset", "dataloader", "numpy"])
def test_validate_accepts_every_input_kind(kind):
    model = classifier()
    trainer = trainer_for(model)
    Xv, yv = classification(37, seed=1)
    data = {
        "dataset": TensorDataset(Xv, yv),
        "dataloader": DataLoader(TensorDataset(Xv, yv), batch_size=6),
        "numpy": (Xv.double().numpy(), yv.numpy()),
    }[kind]
    out, loss = full_batch(model, Xv, yv)
    result = trainer.validate(data)
    assert result["val_loss"] == pytest.approx(loss, rel=1e-5)
    assert result["val_accuracy"] == pytest.approx(ref_accuracy(out, yv), abs=1e-6)


def test_accuracy_is_a_fraction():
    X, y = classification(120)
    trainer = trainer_for(classifier(), lr=0.05, max_epochs=5)
    history = trainer.fit((X, y), val=classification(30, seed=2), batch_size=BATCH)
    for value in history["accuracy"] + history["val_accuracy"]:
        assert 0.0 <= value <= 1.0
    # perfectly predictable labels: accuracy is exactly 1.0, not 100
    labels = trainer.predict(X).argmax(dim=1)
    assert trainer.validate((X, labels))["val_accuracy"] == 1.0
    assert trainer.validate((X, (labels + 1) % CLASSES))["val_accuracy"] == 0.0


def test_binary_accuracy_with_one_logit():
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, 1)
    X, _ = classification(45)
    y = (X[:, :1] > 0).float()
    trainer = trainer_for(model, loss="bce_with_logits", metrics=["accuracy"])
    with torch.no_grad():
        out = model(X)
    expected = float(((out > 0).float() == y).double().mean())
    result = trainer.validate((X, y), batch_size=BATCH)
    assert result["val_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert result["val_loss"] == pytest.approx(float(nn.functional.binary_cross_entropy_with_logits(out, y)), rel=1e-5)


# ----------------------------------------------------------------------------- callable metrics
def test_callable_metric_is_logged_under_its_name():
    def top_class_share(outputs, targets):
        return (outputs.argmax(dim=1) == 0).float().mean()

    model = classifier()
    X, y = classification()
    Xv, yv = classification(37, seed=1)
    trainer = trainer_for(model, optimizer=frozen_optimizer, metrics=["accuracy", top_class_share], max_epochs=2)
    history = trainer.fit((X, y), val=(Xv, yv), batch_size=BATCH)
    assert len(history["top_class_share"]) == 2
    assert len(history["val_top_class_share"]) == 2
    out, _ = full_batch(model, X, y)
    vout, _ = full_batch(model, Xv, yv)
    assert history["top_class_share"][0] == pytest.approx(float((out.argmax(1) == 0).double().mean()), abs=1e-6)
    assert history["val_top_class_share"][1] == pytest.approx(float((vout.argmax(1) == 0).double().mean()), abs=1e-6)
    result = trainer.validate((Xv, yv))
    assert set(result) == {"val_loss", "val_accuracy", "val_top_class_share"}
    assert set(trainer.test((Xv, yv))) == {"test_loss", "test_accuracy", "test_top_class_share"}


def test_callable_loss_is_used():
    def half_mse(outputs, targets):
        return 0.5 * ((outputs - targets) ** 2).mean()

    torch.manual_seed(0)
    model = nn.Linear(FEATURES, 1)
    X, y = regression()
    trainer = trainer_for(model, loss=half_mse, metrics=["mse"])
    result = trainer.validate((X, y), batch_size=BATCH)
    assert result["val_loss"] == pytest.approx(0.5 * result["val_mse"], rel=1e-5)


# ----------------------------------------------------------------------------- regression metrics
def np_regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    err = pred - target
    mse = float(np.mean(err**2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "mse": mse,
        "rmse": math.sqrt(mse),
        "r2": 1.0 - float(np.sum(err**2)) / float(np.sum((target - target.mean()) ** 2)),
    }


def test_regression_metrics_match_numpy_over_the_epoch():
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, 1)
    X, y = regression()
    Xv, yv = regression(37, seed=1)
    trainer = trainer_for(model, optimizer=frozen_optimizer, loss="mse", metrics=["mae", "mse", "rmse", "r2"], max_epochs=1)
    history = trainer.fit((X, y), val=(Xv, yv), batch_size=BATCH)
    with torch.no_grad():
        pred, vpred = model(X).double().numpy(), model(Xv).double().numpy()
    ref, vref = np_regression_metrics(pred, y.double().numpy()), np_regression_metrics(vpred, yv.double().numpy())
    for name in ("mae", "mse", "rmse", "r2"):
        assert history[name][0] == pytest.approx(ref[name], rel=1e-5), name
        assert history[f"val_{name}"][0] == pytest.approx(vref[name], rel=1e-5), name
    assert history["loss"][0] == pytest.approx(ref["mse"], rel=1e-5)
    assert history["val_loss"][0] == pytest.approx(vref["mse"], rel=1e-5)
    # rmse is the root of the epoch mse, not the mean of per-batch roots
    per_batch_rmse = np.mean([math.sqrt(m) for m in batch_means(model, Xv, yv, nn.functional.mse_loss)])
    assert vref["rmse"] != pytest.approx(per_batch_rmse, rel=1e-5)


def test_r2_of_a_perfect_and_of_a_mean_predictor():
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, 1)
    X, _ = regression()
    trainer = trainer_for(model, loss="mse", metrics=["r2"])
    perfect = trainer.predict(X)
    assert trainer.validate((X, perfect), batch_size=7)["val_r2"] == pytest.approx(1.0, abs=1e-6)
    target = perfect + torch.randn(perfect.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.weight.zero_()
        model.bias.fill_(float(target.mean()))
    assert trainer.validate((X, target), batch_size=7)["val_r2"] == pytest.approx(0.0, abs=1e-5)


# ----------------------------------------------------------------------------- lr per epoch
def test_lr_per_epoch_follows_an_epoch_schedule():
    class Halve(gl.Callback):
        def on_epoch_end(self, trainer, logs):
            for group in trainer.optimizer.param_groups:
                group["lr"] *= 0.5

    X, y = classification()
    history = trainer_for(classifier(), optimizer="sgd", lr=0.2, max_epochs=3, callbacks=[Halve()]).fit((X, y), batch_size=BATCH)
    assert history["lr"] == pytest.approx([0.2, 0.1, 0.05], rel=1e-12)
    assert all(type(v) is float for v in history["lr"])


def test_lr_is_the_lr_of_the_epochs_last_optimizer_step():
    """A per-step schedule (halving after every step): the epoch's lr is the one its last step used."""
    used: list[float] = []

    class HalveEachStep(gl.Callback):
        def on_train_batch_end(self, trainer, loss):
            used.append(trainer.optimizer.param_groups[0]["lr"])  # the lr the step just taken used
            trainer.optimizer.param_groups[0]["lr"] *= 0.5

    X, y = classification()
    history = trainer_for(classifier(), optimizer="sgd", lr=0.8, max_epochs=2, callbacks=[HalveEachStep()]).fit((X, y), batch_size=BATCH)
    assert len(used) == 8
    assert history["lr"] == pytest.approx([used[3], used[7]], rel=1e-12)
    assert history["lr"] == pytest.approx([0.8 / 2**3, 0.8 / 2**7], rel=1e-12)


# ----------------------------------------------------------------------------- predict
class XOnly(Dataset):
    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i]


PREDICT_INPUTS = {
    "tensor": lambda X, y: X,
    "numpy-float64": lambda X, y: X.double().numpy(),
    "pair": lambda X, y: (X, y),
    "pair-list": lambda X, y: [X, y],
    "tensordataset-xy": lambda X, y: TensorDataset(X, y),
    "tensordataset-x": lambda X, y: TensorDataset(X),
    "dataset-bare-x": lambda X, y: XOnly(X),
    "dataloader-xy": lambda X, y: DataLoader(TensorDataset(X, y), batch_size=7),
    "dataloader-xyw": lambda X, y: DataLoader(TensorDataset(X, y, torch.ones(len(X))), batch_size=7),
    "dataloader-bare-x": lambda X, y: DataLoader(XOnly(X), batch_size=7),
}


@pytest.mark.parametrize("kind", list(PREDICT_INPUTS))
def test_predict_returns_concatenated_outputs(kind):
    model = classifier()
    X, y = classification(37)
    trainer = trainer_for(model)
    out = trainer.predict(PREDICT_INPUTS[kind](X, y), batch_size=BATCH)
    model.eval()
    with torch.no_grad():
        expected = model(X)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (37, CLASSES)
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_predict_keeps_order_after_shuffled_training():
    model = classifier()
    X, y = classification()
    trainer = trainer_for(model, max_epochs=2)
    trainer.fit((X, y), batch_size=BATCH, shuffle=True)
    model.eval()
    with torch.no_grad():
        expected = model(X)
    torch.testing.assert_close(trainer.predict(X), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trainer.predict(X, batch_size=3), expected, rtol=1e-5, atol=1e-6)
