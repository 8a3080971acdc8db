"""gl.EMA and gl.SWA against the averages written out by hand with torch.optim.swa_utils."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader, TensorDataset

import gradloop as gl
from gradloop.callbacks.averaging import _average_in
from gradloop.persistence import checkpoint
from helpers import sigterm_at

N, FEATURES, CLASSES, BATCH = 50, 6, 3, 8  # 7 batches, the last of 2 (BatchNorm needs 2 in train mode)


def make_data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, CLASSES))


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def trainer_for(model, callbacks, **kwargs):
    options = {"optimizer": sgd, "lr": None, "max_epochs": 3, "default_callbacks": False, "seed": 3, **kwargs}
    return gl.Trainer(model, callbacks=callbacks, **options)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class RawWeights(gl.Callback):
    """The raw (trained) weights after every optimizer step, and at on_fit_end (before final weights are given)."""

    def __init__(self):
        self.steps, self.at_end = [], None

    def on_optimizer_step(self, trainer):
        self.steps.append(snapshot(trainer.model))

    def on_fit_end(self, trainer):
        self.at_end = snapshot(trainer.model)


class AverageAtValidation(gl.Callback):
    """A copy of the EMA's module at every validation, with that validation's logs."""

    def __init__(self, ema):
        self.ema, self.seen = ema, []

    def on_validation_end(self, trainer, logs):
        self.seen.append((copy.deepcopy(self.ema.module), dict(logs)))


# ------------------------------------------------------------------ EMA
@pytest.mark.parametrize("every_n_steps", [1, 3])
def test_ema_is_the_exponential_average_of_the_weights_after_each_step(every_n_steps):
    X, y = make_data()
    val = make_data(21, seed=1)
    decay = 0.8
    raw, ema = RawWeights(), gl.EMA(decay=decay, every_n_steps=every_n_steps)
    seen = AverageAtValidation(ema)
    trainer = trainer_for(make_model(), [ema, raw, seen], val_every_n_steps=4)
    history = trainer.fit((X, y), val=val, batch_size=BATCH)

    expected = None
    for step, weights in enumerate(raw.steps, start=1):
        if step % every_n_steps:
            continue
        if expected is None:
            expected = {k: v.clone() for k, v in weights.items()}
        else:
            expected = {k: (decay * expected[k] + (1 - decay) * w).to(w.dtype) for k, w in weights.items()}
    averaged = ema.module.state_dict()
    assert expected.keys() == averaged.keys()  # parameters and buffers (use_buffers=True): BatchNorm's too
    for name in expected:
        torch.testing.assert_close(averaged[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert int(ema.averaged.n_averaged) == len(raw.steps) // every_n_steps

    # every validation (in the epoch and at its end) is validate() with the averaged weights
    assert len(seen.seen) == 3 + 3 * 7 // 4
    for module, logs in seen.seen:
        assert logs == trainer_for(module, []).validate(val, batch_size=BATCH)
    assert history["val_loss"][-1] == seen.seen[-1][1]["val_loss"]
    # the model ends with the average; training itself ran on the raw weights, as without EMA
    assert same(trainer.model.state_dict(), averaged)
    assert trainer.validate(val, batch_size=BATCH) == seen.seen[-1][1]
    plain = make_model()
    trainer_for(plain, [], val_every_n_steps=4).fit((X, y), val=val, batch_size=BATCH)
    assert same(raw.at_end, plain.state_dict())


def test_ema_update_without_host_sync_is_torchs_update_parameters_bit_for_bit():
    model = make_model()
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ours = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    X, _ = make_data()
    for i in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(X)  # new BatchNorm statistics (and num_batches_tracked)
        torchs.update_parameters(model)
        if i == 0:
            ours.update_parameters(model)
        else:
            _average_in(ours, model)
        assert same(torchs.state_dict(), ours.state_dict())
    assert ours.n_averaged.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ema_update_makes_no_host_sync_on_cuda():
    ema = gl.EMA(decay=0.9)
    trainer = gl.Trainer(make_model().cuda(), optimizer=sgd, lr=None, device="cuda", callbacks=[ema], default_callbacks=False)
    ema.on_fit_start(trainer)
    trainer.state.global_step = 1
    ema.on_optimizer_step(trainer)
    torch.cuda.set_sync_debug_mode("error")
    try:
        ema.on_optimizer_step(trainer)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("evaluate", [True, False])
def test_model_safetensors_holds_the_average_only_with_evaluate(tmp_path, evaluate):
    X, y = make_data()
    raw, ema = RawWeights(), gl.EMA(decay=0.9, evaluate=evaluate)
    trainer = trainer_for(make_model(), [ema, raw], run_dir=tmp_path / "run")
    history = trainer.fit((X, y), val=(X, y), batch_size=BATCH)
    exported = gl.load_weights(make_model(seed=5), tmp_path / "run" / "model.safetensors").state_dict()
    assert same(exported, ema.module.state_dict() if evaluate else raw.at_end)
    assert same(trainer.model.state_dict(), exported)
    assert not same(ema.module.state_dict(), raw.at_end)
    if not evaluate:  # validation ran the raw weights
        assert history["val_loss"][-1] == trainer.validate((X, y), batch_size=BATCH)["val_loss"]


def without_time(history):
    return [{k: v for k, v in e.items() if k != "time"} for e in history.epochs]


def interrupted_and_resumed(tmp_path, make_callback, stop_step, **kwargs):
    """(straight trainer, its callback, its RawWeights), (resumed ...): the second run is stopped by SIGTERM at `stop_step`."""
    X, y = make_data()
    val = make_data(21, seed=1)
    runs = []
    for name, stop in (("straight", None), ("interrupted", stop_step)):
        callback, raw = make_callback(), RawWeights()
        extra = [sigterm_at(stop)] if stop is not None else []
        trainer = trainer_for(make_model(), [callback, raw, *extra], run_dir=tmp_path / name, **kwargs)
        if stop is None:
            trainer.fit((X, y), val=val, batch_size=BATCH)
            runs.append((trainer, callback, raw))
            continue
        with pytest.raises(SystemExit):
            trainer.fit((X, y), val=val, batch_size=BATCH)
        callback, raw = make_callback(), RawWeights()
        trainer = trainer_for(make_model(seed=9), [callback, raw], run_dir=tmp_path / name, **kwargs)
        trainer.fit((X, y), val=val, batch_size=BATCH, resume="last")
        runs.append((trainer, callback, raw))
    return runs


@pytest.mark.parametrize("stop_step", [5, 9])  # mid-epoch (before and after the first epoch's end); 4 steps per epoch
def test_ema_resumes_bit_identically(tmp_path, stop_step):
    (straight, ema_a, raw_a), (resumed, ema_b, raw_b) = interrupted_and_resumed(
        tmp_path, lambda: gl.EMA(decay=0.7, every_n_steps=2), stop_step, accumulate_grad_batches=2, val_every_n_steps=3
    )
    assert same(raw_a.at_end, raw_b.at_end)
    assert same(ema_a.averaged.state_dict(), ema_b.averaged.state_dict())  # the average and n_averaged
    assert same(straight.model.state_dict(), resumed.model.state_dict())
    assert without_time(straight.history) == without_time(resumed.history)


# ------------------------------------------------------------------ SWA
def swa_hand_loop(model, X, y, *, epochs, start, swa_lr, anneal_epochs, anneal_strategy):
    """torch's SWA recipe, with SWALR built at the start of epoch `start` and stepped at each epoch's end from then."""
    loss_fn = nn.CrossEntropyLoss()
    optimizer = sgd(model.parameters())
    loader = DataLoader(TensorDataset(X, y), batch_size=BATCH, shuffle=True)
    swa_model, scheduler, lrs = AveragedModel(model), None, []
    for epoch in range(epochs):
        if epoch == start:
            scheduler = SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=anneal_epochs, anneal_strategy=anneal_strategy)
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xb), yb).backward()
            optimizer.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        if epoch >= start:
            swa_model.update_parameters(model)
            scheduler.step()
    update_bn(DataLoader(TensorDataset(X, y), batch_size=BATCH), swa_model)
    return swa_model.module, lrs


@pytest.mark.parametrize(("start", "anneal_epochs", "anneal_strategy"), [(1, 2, "cos"), (2, 0, "linear"), (0, 3, "linear")])
def test_swa_is_torchs_recipe_written_by_hand(start, anneal_epochs, anneal_strategy):
    X, y = make_data()
    options = {"swa_lr": 0.01, "anneal_epochs": anneal_epochs, "anneal_strategy": anneal_strategy}
    base = make_model()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    raw, swa = RawWeights(), gl.SWA(start_epoch=start, **options)

    torch.manual_seed(11)
    trainer = trainer_for(ours, [swa, raw], max_epochs=5, seed=None)
    history = trainer.fit((X, y), batch_size=BATCH)
    after_ours = torch.rand(1)

    torch.manual_seed(11)
    swa_module, lrs = swa_hand_loop(theirs, X, y, epochs=5, start=start, **options)
    after_theirs = torch.rand(1)

    assert history["lr"] == lrs and lrs[-1] != lrs[0]
    assert same(raw.at_end, theirs.state_dict())  # training itself is the hand loop's
    assert same(ours.state_dict(), swa_module.state_dict())  # the SWA weights, BatchNorm statistics from update_bn
    assert not same(ours.state_dict(), raw.at_end)
    assert int(swa.averaged.n_averaged) == 5 - start
    assert torch.equal(after_ours, after_theirs)


@pytest.mark.parametrize("stop_step", [10, 15])  # 7 steps per epoch: in epoch 1 (SWA's start), in epoch 2
def test_swa_resumes_bit_identically(tmp_path, stop_step):
    (straight, swa_a, raw_a), (resumed, swa_b, raw_b) = interrupted_and_resumed(
        tmp_path, lambda: gl.SWA(swa_lr=0.01, start_epoch=1, anneal_epochs=2), stop_step, max_epochs=4
    )
    assert same(raw_a.at_end, raw_b.at_end)
    assert same(swa_a.averaged.state_dict(), swa_b.averaged.state_dict())
    assert swa_a.scheduler.state_dict() == swa_b.scheduler.state_dict()
    assert same(straight.model.state_dict(), resumed.model.state_dict())
    assert without_time(straight.history) == without_time(resumed.history)


def test_the_checkpoint_written_when_fit_ends_keeps_the_raw_weights(tmp_path):
    X, y = make_data()
    raw, swa = RawWeights(), gl.SWA(swa_lr=0.01, start_epoch=1)
    callbacks = [swa, raw, gl.ModelCheckpoint(save_best=False, keep=0)]
    trainer = trainer_for(make_model(), callbacks, run_dir=tmp_path, max_steps=17)  # ends inside epoch 2
    trainer.fit((X, y), batch_size=BATCH)
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.ckpt")
    assert saved["progress"]["global_step"] == 17
    assert same(saved["model"], raw.at_end)  # the state to train on; the model ends with the SWA weights
    assert same(trainer.model.state_dict(), swa.module.state_dict()) and not same(raw.at_end, swa.module.state_dict())


# ------------------------------------------------------------------ bad arguments and conflicts
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: gl.EMA(decay=1.0), "decay must be a number in \\(0, 1\\)"),
        (lambda: gl.EMA(decay=0), "decay must be a number in \\(0, 1\\)"),
        (lambda: gl.EMA(decay="0.9"), "decay must be a number"),
        (lambda: gl.EMA(every_n_steps=0), "every_n_steps must be a positive integer"),
        (lambda: gl.SWA(swa_lr=-0.1, start_epoch=1), "swa_lr must be a number >= 0"),
        (lambda: gl.SWA(swa_lr=0.1, start_epoch=-1), "start_epoch must be an integer >= 0"),
        (lambda: gl.SWA(swa_lr=0.1, start_epoch=1, anneal_epochs=1.5), "anneal_epochs must be an integer >= 0"),
        (lambda: gl.SWA(swa_lr=0.1, start_epoch=1, anneal_strategy="exp"), "anneal_strategy must be 'cos' or 'linear'"),
    ],
)
def test_bad_arguments_are_one_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_ema_evaluate_must_be_a_bool():
    with pytest.raises(TypeError, match="evaluate must be True or False"):
        gl.EMA(evaluate="yes")


@pytest.mark.parametrize(
    "callbacks",
    [
        lambda: [gl.EMA(), gl.SWA(swa_lr=0.01, start_epoch=1)],
        lambda: [gl.EMA(), gl.EarlyStopping(restore_best_weights=True)],
        lambda: [gl.SWA(swa_lr=0.01, start_epoch=1), gl.EarlyStopping(restore_best_weights=True)],
    ],
)
def test_two_callbacks_that_set_the_final_weights_are_refused(callbacks):
    with pytest.raises(ValueError, match="would both supply the final weights: keep one of them"):
        trainer_for(make_model(), callbacks())


def test_ema_aside_and_swa_go_together():
    X, y = make_data()
    ema, swa = gl.EMA(evaluate=False), gl.SWA(swa_lr=0.01, start_epoch=1)
    trainer = trainer_for(make_model(), [ema, swa])
    trainer.fit((X, y), batch_size=BATCH)
    assert same(trainer.model.state_dict(), swa.module.state_dict())


def test_swa_refuses_an_lr_callback_and_a_start_after_the_last_epoch():
    X, y = make_data()
    trainer = trainer_for(make_model(), [gl.SWA(swa_lr=0.01, start_epoch=1), gl.ReduceLROnPlateau(monitor="loss")])
    with pytest.raises(ValueError, match="SWA sets the LR from start_epoch on \\(SWALR\\) and ReduceLROnPlateau would change it too"):
        trainer.fit((X, y), batch_size=BATCH)
    trainer = trainer_for(make_model(), [gl.SWA(swa_lr=0.01, start_epoch=3)], max_epochs=3)
    with pytest.raises(ValueError, match="SWA\\(start_epoch=3\\) never starts: training runs epochs 0..2"):
        trainer.fit((X, y), batch_size=BATCH)


# ------------------------------------------------------------------ torchrun
DISTRIBUTED_SCRIPT = """
import os, sys
import torch
from torch import nn
import gradloop as gl

rank, out = int(os.environ["RANK"]), sys.argv[1]
g = torch.Generator().manual_seed(0)
X, y = torch.randn(203, 6, generator=g), torch.randint(0, 3, (203,), generator=g)
saved = {}
for name, callback in (("ema", gl.EMA(decay=0.8)), ("swa", gl.SWA(swa_lr=0.01, start_epoch=1))):
    torch.manual_seed(1000 + rank)  # DDP starts every rank from rank 0's weights
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    trainer = gl.Trainer(model, lr=0.01, max_epochs=3, callbacks=[callback], default_callbacks=False)
    history = trainer.fit((X, y), val=(X[:61], y[:61]), batch_size=16)
    saved[name] = {k: v.clone() for k, v in model.state_dict().items()}
    saved[name + "_val_loss"] = torch.tensor(history["val_loss"])
torch.save(saved, os.path.join(out, f"rank{rank}.pt"))
"""


def test_under_torchrun_every_rank_ends_with_the_same_averaged_weights(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "train.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    command += ["--master_port", str(port), str(script), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    for name in ("ema", "swa"):  # SWA: each rank's update_bn saw its shard; the statistics are averaged over ranks
        assert same(r0[name], r1[name]), name
        assert torch.equal(r0[name + "_val_loss"], r1[name + "_val_loss"])
