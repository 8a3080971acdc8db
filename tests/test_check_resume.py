"""gl.check_resume: bit-identical on sound setups (the bundled examples, a plain MLP); names the culprit otherwise."""

import json
import random
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import gradloop as gl
from gradloop.util import rng_state
from helpers import BLOBS_CONFIG, run_cli, write_blobs_csv
from test_examples import load_example


def blobs(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g)
    return X, (X[:, 0] + X[:, 1] > 0).long()


def mlp_factory(**options):
    def factory():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
        return gl.Trainer(model, seed=0, default_callbacks=False, **options)

    return factory


def test_a_plain_mlp_resumes_bit_identically_and_the_rngs_are_left_alone():
    X, y = blobs()
    before = rng_state()
    result = gl.check_resume(mlp_factory(metrics=["accuracy"]), (X, y), val=(X[:30], y[:30]), steps=17, batch_size=16)
    assert result.ok and result.differences == [], str(result)
    assert str(result).startswith("OK    bit-identical")
    assert result.steps == 17 and result.interrupted_at == 8  # nearest 17/2 that is not an epoch's end (7 steps per epoch)
    after = rng_state()
    assert after["python"] == before["python"] and torch.equal(after["torch"], before["torch"])


def test_a_resume_that_forgets_the_rng_states_is_caught(monkeypatch):
    import gradloop.persistence.layout as layout

    monkeypatch.setattr(layout, "set_rng_state", lambda state: None)  # a resume bug: dropout draws other masks
    X, y = blobs()
    result = gl.check_resume(mlp_factory(), (X, y), steps=17, batch_size=16)
    assert not result.ok
    first = result.differences[0]
    assert (first.kind, first.name) == ("rng at a batch", "the torch RNG state")
    assert "after the resume" in first.where and "checkpoint's RNG states were not put back" in result.message
    assert result.differences[1].kind == "outputs"


def test_accumulation_callbacks_and_a_schedule_resume_bit_identically():
    X, y = blobs(120)
    factory = mlp_factory(
        accumulate_grad_batches=2,
        callbacks=[gl.EarlyStopping(monitor="loss", patience=50), gl.LRScheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 3))],
    )
    result = gl.check_resume(factory, (X, y), steps=11, batch_size=16)
    assert result.ok, str(result)


def test_the_runs_write_into_a_temporary_folder_not_the_factorys_run_dir(tmp_path):
    X, y = blobs()
    result = gl.check_resume(mlp_factory(run_dir=tmp_path / "mine"), (X, y), val=(X[:20], y[:20]), steps=9, batch_size=16)
    assert result.ok, str(result)  # with the default CSV/JSONL loggers, curves and ModelCheckpoint of a run_dir
    assert not (tmp_path / "mine").exists()


def test_the_vae_example_resumes_bit_identically():
    vae = load_example("vae.py")
    X_train, _ = vae.load_digits()
    X_train = X_train[:400]

    def factory():
        torch.manual_seed(1)
        return gl.Trainer(vae.VAE(), optimizer="adam", lr=1e-3, step=vae.vae_step, default_callbacks=False)

    result = gl.check_resume(factory, (X_train, X_train), steps=6, batch_size=128)  # 4 batches per epoch
    assert result.ok, str(result)
    assert result.interrupted_at == 3


def test_the_two_inputs_example_resumes_bit_identically():
    example = load_example("two_inputs.py")
    train, val = example.load_data()

    def factory():
        torch.manual_seed(0)
        model = example.NumericAndCategorical(train[0][0].shape[1], example.BINS, classes=3)
        return gl.Trainer(model, optimizer="adam", lr=1e-2, metrics=["accuracy"], default_callbacks=False)

    result = gl.check_resume(factory, train, val=val, steps=12, batch_size=16)
    assert result.ok, str(result)


class NoisyDataset(Dataset):
    """Noise augmentation from an unseeded random.Random(): no seed and no checkpoint reaches it."""

    def __init__(self, X, y):
        self.X, self.y, self.rng = X, y, random.Random()

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] + self.rng.random(), self.y[i]


def test_an_unseeded_random_dataset_is_named_as_the_data_pipeline():
    X, y = blobs()
    result = gl.check_resume(mlp_factory(), NoisyDataset(X, y), steps=10, batch_size=16)
    assert not result.ok
    first = result.differences[0]
    assert (first.kind, first.name) == ("data", "input[0]")
    assert 0 < first.max_abs_diff < 1  # the noise is in [0, 1)
    assert "data pipeline" in result.message
    assert "Seed the Dataset's RNG" in result.message and "torch's generator" in result.message
    assert str(result).startswith("FAIL  not bit-identical")


CALLS = 0


class CountingNet(nn.Module):
    """A forward that reads a module-level counter (reset with each new model): state no checkpoint holds."""

    def __init__(self):
        super().__init__()
        global CALLS
        CALLS = 0
        self.net = nn.Linear(5, 2)

    def forward(self, x):
        global CALLS
        CALLS += 1
        return self.net(x) / (1 + 0.01 * CALLS)


def counting_factory():
    torch.manual_seed(0)
    return gl.Trainer(CountingNet(), seed=0, default_callbacks=False)


def test_a_global_counter_in_forward_is_named_as_state_outside_the_model():
    X, y = blobs()
    result = gl.check_resume(counting_factory, (X, y), steps=10, batch_size=16)
    assert not result.ok
    first = result.differences[0]
    assert (first.kind, first.name) == ("outputs", "output") and first.max_abs_diff > 0
    assert "after the resume" in first.where and "epoch 0, batch 5" in first.where  # the first batch after the interruption
    assert "state outside the model, the optimizer and the RNG" in result.message
    assert "register_buffer" in result.message
    weights = [d for d in result.differences if d.kind == "weights"]
    assert [d.name for d in weights] == ["net.weight", "net.bias"] and all(d.max_abs_diff > 0 for d in weights)
    assert any(d.name == "optimizer state of net.weight['exp_avg']" for d in result.differences)


def test_a_counter_that_the_factory_never_resets_differs_before_the_interruption():
    X, y = blobs()

    def factory():
        trainer = counting_factory()
        global CALLS
        CALLS = 1000 * len(seen)  # each call starts elsewhere
        seen.append(trainer)
        return trainer

    seen = []
    result = gl.check_resume(factory, (X, y), steps=10, batch_size=16)
    assert result.differences[0].kind == "outputs"
    assert "before the interruption" in result.differences[0].where and "already before the interruption" in result.message


def test_a_factory_with_different_initial_weights_is_named():
    X, y = blobs()
    seeds = iter(range(10))

    def factory():
        torch.manual_seed(next(seeds))
        return gl.Trainer(nn.Linear(5, 2), default_callbacks=False)

    result = gl.check_resume(factory, (X, y), steps=4, batch_size=16)
    assert not result.ok and result.differences[0].kind == "initial weights"
    assert result.differences[0].name == "weight" and "torch.manual_seed" in result.message


def test_bad_arguments_are_one_clear_error():
    X, y = blobs()
    model = nn.Linear(5, 2)
    with pytest.raises(ValueError, match="steps must be at least 2"):
        gl.check_resume(mlp_factory(), (X, y), steps=1)
    with pytest.raises(TypeError, match="must return a gl.Trainer; it returned Linear"):
        gl.check_resume(lambda: model, (X, y), steps=4)
    with pytest.raises(ValueError, match="build the model inside the factory"):
        gl.check_resume(lambda: gl.Trainer(model, default_callbacks=False), (X, y), steps=4, batch_size=16)
    with pytest.raises(ValueError, match="interrupt_at must be below steps"):
        gl.check_resume(mlp_factory(), (X, y), steps=4, interrupt_at=4)


def test_cli_doctor_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_blobs_csv(tmp_path / "blobs.csv")
    (tmp_path / "blobs.toml").write_text(BLOBS_CONFIG)
    code, out, _ = run_cli(capsys, "doctor", "blobs.toml", "--resume")
    assert code == 0, out
    assert "16 optimizer steps (8 per epoch)" in out and "OK    bit-identical" in out
    assert "interrupted after optimizer step 7" in out
    assert not (tmp_path / "runs").exists()  # the runs live in a temporary folder
    code, _, err = run_cli(capsys, "doctor", "blobs.toml", "--steps", "5")
    assert code == 2 and "--steps goes with --resume" in err


def test_import_gradloop_leaves_the_resume_check_unloaded():
    probe = "import json, sys, gradloop as gl; before = 'gradloop.resume_check' in sys.modules; gl.check_resume; "
    probe += "print(json.dumps([before, 'gradloop.resume_check' in sys.modules, gl.ResumeCheckResult.__name__]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout) == [False, True, "ResumeCheckResult"], done.stderr
