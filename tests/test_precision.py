"""Mixed precision on the CPU: bf16 autocast, and float16 with a gradient scaler that resumes."""

import copy

import pytest
import torch
from torch import nn

import gradloop as gl


def problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 10, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long()
    torch.manual_seed(0)
    return X, y, nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_and_predicts_float32(precision):
    X, y, model = problem()
    trainer = gl.Trainer(model, lr=1e-2, metrics=["accuracy"], max_epochs=4, precision=precision, default_callbacks=False)
    history = trainer.fit((X, y), val=(X[:100], y[:100]), batch_size=32)
    assert history["val_accuracy"][-1] > 0.9
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    predictions = trainer.predict(X)
    assert predictions.dtype == torch.float32 and predictions.shape == (400, 2)


def test_autocast_is_really_on():
    X, y, model = problem()
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    gl.Trainer(model, max_epochs=1, precision="bf16-mixed", default_callbacks=False).fit((X, y), batch_size=200)
    assert torch.bfloat16 in seen


def test_float16_scaler_state_is_checkpointed_and_restored(tmp_path):
    X, y, model = problem()
    trainer = gl.Trainer(copy.deepcopy(model), lr=1e-2, max_epochs=2, precision="16-mixed", default_callbacks=False)
    trainer.fit((X, y), batch_size=32)
    trainer.precision.scaler.update(1234.0)  # a distinctive scale that must come back
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    fresh = gl.Trainer(copy.deepcopy(model), lr=1e-2, max_epochs=2, precision="16-mixed", default_callbacks=False)
    fresh.load_checkpoint(tmp_path / "a.ckpt")
    assert fresh.precision.scaler.get_scale() == 1234.0


def test_unknown_precision_is_an_error():
    X, y, model = problem()
    with pytest.raises(ValueError, match="unknown precision '8-mixed'"):
        gl.Trainer(model, precision="8-mixed")
