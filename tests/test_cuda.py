"""The CUDA paths, on a real GPU (skipped elsewhere; `bench/gpu_check.sh` runs them on a GPU machine).

Each test states what a user relies on: in-memory data resident on the GPU or streamed from
pinned memory, a DataLoader with `pin_memory`, mixed precision with its scaler in checkpoints,
predictions as float32 on the CPU, the CUDA RNG in the resume point, and no host-device sync per
step (checked with torch's own sync debug mode: gradloop lifts it only for its per-epoch reads).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradloop as gl
from test_equivalence import BATCH, assert_same_weights, hand_loop, make_data, make_model
from test_resume import SendSignalAt

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh runs these on a GPU machine)"),
]

CUDA = torch.device("cuda")


def on_gpu(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(CUDA) for t in tensors)


def fit_pair(train_for_gradloop, train_for_hand, **trainer_options):
    """gradloop and the tutorial loop from the same weights and the same global seed."""
    base = make_model(dropout=True).to(CUDA)
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(7)
    trainer = gl.Trainer(ours, optimizer="sgd", lr=0.05, max_epochs=2, default_callbacks=False, device="cuda", **trainer_options)
    trainer.fit(train_for_gradloop, batch_size=BATCH, shuffle=True)
    torch.manual_seed(7)
    hand_loop(theirs, torch.optim.SGD(theirs.parameters(), lr=0.05), train_for_hand, epochs=2, batch_size=BATCH, shuffle=True)
    return ours, theirs


def test_resident_in_memory_data_matches_the_hand_loop():
    X, y = on_gpu(*make_data())
    ours, theirs = fit_pair((X, y), (X, y))
    assert next(ours.parameters()).is_cuda
    assert_same_weights(ours, theirs)


def test_cpu_tensors_stream_to_the_gpu_and_match_the_hand_loop():
    X, y = make_data()
    ours, theirs = fit_pair((X, y), on_gpu(X, y))
    assert_same_weights(ours, theirs)


def test_a_loader_with_pin_memory_trains_on_the_gpu():
    X, y = make_data()
    seen = []

    class Devices(gl.Callback):
        def on_train_batch_end(self, trainer, loss):
            seen.append(loss.device.type)

    model = make_model().to(CUDA)
    loader = DataLoader(TensorDataset(X, y), batch_size=BATCH, shuffle=True, pin_memory=True)
    history = gl.Trainer(model, max_epochs=1, callbacks=[Devices()], default_callbacks=False, device="cuda").fit(loader)
    assert set(seen) == {"cuda"} and torch.isfinite(torch.tensor(history["loss"])).all()


def stop_and_resume(tmp_path, make_trainer, X, y, step=9):
    """An uninterrupted run, and one stopped by SIGTERM at `step` (mid-epoch: 7 batches an epoch) then resumed."""
    whole = make_trainer(tmp_path / "whole")
    whole.fit((X, y), batch_size=BATCH)
    with pytest.raises(SystemExit):
        make_trainer(tmp_path / "cut", [SendSignalAt(step)]).fit((X, y), batch_size=BATCH)
    resumed = make_trainer(tmp_path / "cut")
    resumed.fit((X, y), batch_size=BATCH, resume="last")
    return whole, resumed, tmp_path / "cut" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_resumes_bit_identically_with_its_scaler(tmp_path, precision):
    X, y = make_data()

    def make_trainer(run_dir, callbacks=()):
        torch.manual_seed(0)
        model = make_model().to(CUDA)
        return gl.Trainer(model, max_epochs=2, precision=precision, seed=3, run_dir=run_dir, callbacks=list(callbacks), device="cuda")

    whole, resumed, path = stop_and_resume(tmp_path, make_trainer, X, y)
    assert_same_weights(whole.model, resumed.model)
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())
    if precision == "16-mixed":
        saved = torch.load(path, weights_only=True, map_location="cpu")["scaler"]
        assert saved is not None and saved["scale"] > 0
        fresh = make_trainer(tmp_path / "fresh")
        fresh.load_checkpoint(path)
        assert fresh.precision.scaler is not None and fresh.precision.scaler.state_dict()["scale"] == saved["scale"]


def test_predict_returns_float32_on_the_cpu():
    X, y = make_data()
    trainer = gl.Trainer(make_model().to(CUDA), max_epochs=1, precision="bf16-mixed", default_callbacks=False, device="cuda")
    trainer.fit((X, y))
    predictions = trainer.predict(X)
    assert predictions.device.type == "cpu" and predictions.dtype == torch.float32 and predictions.shape == (len(X), 3)


def test_the_cuda_rng_is_part_of_the_resume_point(tmp_path):
    X, y = make_data()

    def make_trainer(run_dir, callbacks=()):
        torch.manual_seed(0)  # dropout on the GPU draws from the CUDA generator
        model = make_model(dropout=True).to(CUDA)
        return gl.Trainer(model, max_epochs=2, seed=5, run_dir=run_dir, callbacks=list(callbacks), device="cuda")

    whole, resumed, path = stop_and_resume(tmp_path, make_trainer, X, y, step=10)
    assert_same_weights(whole.model, resumed.model)
    saved = torch.load(path, weights_only=True, map_location="cpu")
    torch.cuda.manual_seed_all(12345)  # disturb: loading must bring the saved CUDA state back
    make_trainer(tmp_path / "again").load_checkpoint(path)
    assert torch.equal(torch.cuda.get_rng_state().cpu(), saved["rng"]["cuda"][0].cpu())


class Doubled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_model(dropout=False)

    def forward(self, x):
        return self.net(x)


def custom_step(model, batch):
    x, y = batch
    return {"loss": nn.functional.cross_entropy(model(x), y), "outputs": model(x), "targets": y}


SYNC_CASES = {
    "tensors": dict(data=lambda X, y: (X, y), options={}),
    "loader": dict(data=lambda X, y: DataLoader(TensorDataset(X, y), batch_size=BATCH, shuffle=True, pin_memory=True), options={}),
    "step": dict(data=lambda X, y: (X, y), options={"step": custom_step}),
    "grad_clip_norm": dict(data=lambda X, y: (X, y), options={"grad_clip_norm": 1.0}),
}


@pytest.mark.parametrize("case", SYNC_CASES)
def test_no_host_sync_per_step(tmp_path, case):
    """A whole fit under torch's sync debug mode "error": any synchronizing call inside the steps raises.
    gradloop lifts the mode only for its documented per-epoch reads (checks before the first step,
    the epoch's metrics, checkpoints and logs at the epoch's end)."""
    X, y = make_data(400)
    spec = SYNC_CASES[case]
    model = Doubled().to(CUDA)
    trainer = gl.Trainer(model, max_epochs=2, device="cuda", run_dir=tmp_path, seed=0, **spec["options"])
    torch.cuda.set_sync_debug_mode("error")
    try:
        history = trainer.fit(spec["data"](X, y), val=(X[:64], y[:64]), batch_size=BATCH)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(history.epochs) == 2
    assert torch.cuda.get_sync_debug_mode() == 0
