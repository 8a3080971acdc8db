"""Bad input: exit code 2, one line `gradloop: error: ...` naming the key or file, no run directory.

Most cases call `main()` in this process (no interpreter start-up per case); two go through a
real subprocess to pin the exit status and stderr of the installed command.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import BLOBS_CONFIG
from helpers import run_cli as run

GOOD_CONFIG = BLOBS_CONFIG.replace("max_epochs = 2", "max_epochs = 1")


def write_blobs(path, n=60, labels=("cat", "dog", "eel")):
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["f1", "f2", "animal"])
        for i in range(n):
            writer.writerow([f"{rng.normal():.4f}", f"{rng.normal():.4f}", labels[i % len(labels)]])


def assert_usage_error(capsys, args, *expected, run_dir="runs"):
    code, _, err = run(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradloop: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not Path(run_dir).exists(), f"{run_dir} was left behind"
    return lines[0]


@pytest.fixture
def blobs(tmp_path):
    write_blobs(tmp_path / "blobs.csv")
    return tmp_path


def config(tmp_path, text, name="run.toml"):
    (tmp_path / name).write_text(text)
    return name


# ------------------------------------------------------------------------------------ config problems
@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD_CONFIG.replace("[train]", "[train]\nlrr = 0.1"), ["run.toml", "'train.lrr'", "did you mean 'train.lr'"]),
        (GOOD_CONFIG.replace("[train]", "[trian]"), ["'trian'", "did you mean 'train'"]),
        (GOOD_CONFIG.replace("max_epochs = 1", 'max_epochs = "ten"'), ["train.max_epochs must be an integer"]),
        (GOOD_CONFIG.replace("batch_size = 16", "batch_size = 16\nval_split = 1.5"), ["data.val_split must be less than 1"]),
        (GOOD_CONFIG.replace("hidden = [8]", 'name = "mpl"'), ["model.name", "did you mean 'mlp'"]),
        (GOOD_CONFIG.replace('path = "blobs.csv"', 'path = "blobs.csv"\nname = "wine"'), ["data", "exactly one of"]),
        ('[data]\nname = "wines"\n', ["data.name", "did you mean 'wine'"]),
        (
            GOOD_CONFIG + '[callbacks.early_stopping]\nmonitor = "val_acc"\n',
            ["[callbacks.early_stopping]: EarlyStopping monitors 'val_acc', which is not logged", "did you mean 'val_accuracy'"],
        ),
        (GOOD_CONFIG + "[callbacks.early_stopping]\npatience = -1\n", ["callbacks.early_stopping.patience"]),
        ("[data\n", ["run.toml: invalid TOML"]),
    ],
)
def test_config_errors(blobs, capsys, text, expected):
    assert_usage_error(capsys, ["fit", config(blobs, text)], *expected)


def test_missing_config_and_bad_overrides(blobs, capsys):
    assert_usage_error(capsys, ["fit", "missing.toml"], "config file 'missing.toml' does not exist")
    name = config(blobs, GOOD_CONFIG)
    assert_usage_error(capsys, ["fit", name, "--set", "train.lr=abc"], "train.lr must be a number; got 'abc'")
    assert_usage_error(capsys, ["fit", name, "--set", "lr"], "--set 'lr'")
    assert_usage_error(capsys, ["fit", name, "--set", "data.val_split=0.001"], "data.val_split = 0.001 leaves no validation samples")
    assert_usage_error(capsys, ["fit"], "CONFIG.toml")
    assert_usage_error(capsys, ["fitt"], "invalid choice: 'fitt'")


# ------------------------------------------------------------------------------------ data problems
def test_missing_data_file(tmp_path, capsys):
    name = config(tmp_path, GOOD_CONFIG.replace("blobs.csv", "nope.csv"))
    assert_usage_error(capsys, ["fit", name], "data.path", "'nope.csv' does not exist")


def test_missing_target_column_lists_the_columns(blobs, capsys):
    name = config(blobs, GOOD_CONFIG.replace('target = "animal"', 'target = "label"'))
    assert_usage_error(capsys, ["fit", name], "blobs.csv", "no target column 'label'", "columns: f1, f2, animal")


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            "f1,f2,animal\n" + "".join(f"{i},{'nan' if i == 3 else i},{'ab'[i % 2]}\n" for i in range(20)),
            "NaN or Inf (first at line 5, column 'f2')",
        ),
        ("f1,f2,animal\n" + "".join(f"{i},{'' if i == 3 else i},{'ab'[i % 2]}\n" for i in range(20)), "NaN or Inf"),
        ("f1,f2,animal\n", "no samples"),
        ("", "the file is empty"),
        ("f1,f2,animal\n1,x,a\n2,3,b\n", "column 'f2' is not numeric (line 2: 'x')"),
    ],
)
def test_bad_csv_contents(tmp_path, capsys, content, expected):
    (tmp_path / "blobs.csv").write_text(content)
    assert_usage_error(capsys, ["fit", config(tmp_path, GOOD_CONFIG)], "blobs.csv", expected)


def test_bad_npz_and_idx(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", X=np.ones((10, 2)), labels=np.zeros(10))
    assert_usage_error(capsys, ["fit", config(tmp_path, '[data]\npath = "d.npz"\n')], "d.npz", "needs arrays 'X' and 'y'")
    np.savez(tmp_path / "e.npz", X=np.ones((0, 2)), y=np.zeros(0))
    assert_usage_error(capsys, ["fit", config(tmp_path, '[data]\npath = "e.npz"\n')], "e.npz", "no samples")
    (tmp_path / "mnist").mkdir()
    assert_usage_error(capsys, ["fit", config(tmp_path, '[data]\npath = "mnist"\n')], "mnist", "no train-images-idx3-ubyte")
    (tmp_path / "d.txt").write_text("1,2\n")
    assert_usage_error(capsys, ["fit", config(tmp_path, '[data]\npath = "d.txt"\n')], "d.txt", "unsupported data file")


def test_validation_labels_unknown_to_the_training_data(blobs, capsys):
    write_blobs(blobs / "val.csv", n=10, labels=("cat", "fox"))
    text = GOOD_CONFIG.replace('target = "animal"', 'target = "animal"\nval_path = "val.csv"')
    # the classes are all labels seen at fit time, so a model still has an output for "fox"; a test
    # file seen only later (eval --data) with unknown labels is the error case
    assert run(capsys, "fit", config(blobs, text), "--run-dir", "runs/v")[0] == 0
    write_blobs(blobs / "later.csv", n=10, labels=("cat", "gnu"))
    assert_usage_error(
        capsys, ["eval", "runs/v", "--data", "later.csv"], "later.csv", "labels 'gnu' are not among the run's classes", run_dir="runs/never"
    )


# ------------------------------------------------------------------------------------ model problems
def test_model_problems(blobs, capsys):
    text = GOOD_CONFIG.replace("hidden = [8]", 'name = "cnn"')
    assert_usage_error(capsys, ["fit", config(blobs, text)], "model.name = 'cnn' needs image-shaped inputs")
    text = GOOD_CONFIG.replace("hidden = [8]", 'name = "no_such_zoo:make"')
    assert_usage_error(capsys, ["fit", config(blobs, text)], "model.name 'no_such_zoo:make'", "cannot import 'no_such_zoo'")
    (blobs / "tiny_zoo.py").write_text("import torch\ndef two(input_shape, num_outputs):\n    return torch.nn.Linear(input_shape[0], 2)\n")
    text = GOOD_CONFIG.replace("hidden = [8]", 'name = "tiny_zoo:two"')
    assert_usage_error(capsys, ["fit", config(blobs, text)], "model 'tiny_zoo:two' does not fit the data", "labels must lie in [0, 2)")
    text = GOOD_CONFIG.replace("max_epochs = 1", 'max_epochs = 1\nloss = "mse"')
    assert_usage_error(capsys, ["fit", config(blobs, text)], "does not fit the data", "mse")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(blobs, capsys):
    text = GOOD_CONFIG.replace("max_epochs = 1", 'max_epochs = 1\ndevice = "cuda"')
    assert_usage_error(capsys, ["fit", config(blobs, text)], "[train]", "device='cuda'")


# ------------------------------------------------------------------------------------ run directories
def test_existing_run_dir_is_never_overwritten(blobs, capsys):
    (blobs / "runs" / "old").mkdir(parents=True)
    (blobs / "runs" / "old" / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "fit", config(blobs, GOOD_CONFIG), "--run-dir", "runs/old")
    assert code == 2 and "run directory 'runs/old' is not empty" in err
    assert [p.name for p in (blobs / "runs" / "old").iterdir()] == ["notes.txt"]


def test_empty_existing_run_dir_is_used_and_kept_empty_on_error(blobs, capsys):
    (blobs / "out").mkdir()
    name = config(blobs, GOOD_CONFIG.replace('target = "animal"', 'target = "label"'))
    assert_usage_error(capsys, ["fit", name, "--run-dir", "out"], "no target column", run_dir="runs")
    assert (blobs / "out").is_dir() and not any((blobs / "out").iterdir())


def test_commands_on_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for command in (["eval", "empty"], ["predict", "empty", "x.csv"], ["resume", "empty"]):
        assert_usage_error(capsys, command, "'empty' has no config.toml")
    for command in (["eval", "nope"], ["plot", "nope"], ["runs", "nope"], ["resume", "nope"]):
        assert_usage_error(capsys, command, "'nope' does not exist")
    assert_usage_error(capsys, ["plot", "empty"], "has no metrics.csv")
    code, out, err = run(capsys, "runs")  # no ./runs yet: nothing to list, not an error
    assert code == 0 and out == "" and "no runs yet" in err


def test_predict_input_problems(blobs, capsys):
    assert run(capsys, "fit", config(blobs, GOOD_CONFIG), "--run-dir", "runs/p")[0] == 0
    assert_usage_error(capsys, ["predict", "runs/p", "missing.csv"], "missing.csv", "does not exist", run_dir="runs/never")
    (blobs / "few.csv").write_text("f1,f9,f7\n1,2,3\n")
    assert_usage_error(capsys, ["predict", "runs/p", "few.csv"], "few.csv", "missing feature columns f2", run_dir="runs/never")
    np.save(blobs / "wide.npy", np.zeros((3, 5)))
    assert_usage_error(
        capsys, ["predict", "runs/p", "wide.npy"], "wide.npy", "samples have shape (5,) but the model takes (2,)", run_dir="runs/never"
    )
    assert_usage_error(capsys, ["predict", "runs/p", "blobs.csv", "--out", "no/such/dir/p.csv"], "--out", run_dir="runs/never")


# ------------------------------------------------------------------------------------ failures during training
ZOO = """
import torch

class Flaky(torch.nn.Module):
    '''Fails in its `fail_at`-th training-mode forward pass.'''
    def __init__(self, n_in, n_out, fail_at):
        super().__init__()
        self.linear, self.calls, self.fail_at = torch.nn.Linear(n_in, n_out), 0, fail_at
    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls >= self.fail_at:
                raise RuntimeError("the GPU caught fire")
        return self.linear(x)

def flaky(input_shape, num_outputs, fail_at=2):
    return Flaky(input_shape[0], num_outputs, fail_at)
"""


def test_a_failure_during_training_without_checkpoint_removes_the_run_dir(blobs, capsys):
    (blobs / "flaky_zoo.py").write_text(ZOO)
    text = GOOD_CONFIG.replace("hidden = [8]", 'name = "flaky_zoo:flaky"')
    code, _, err = run(capsys, "fit", config(blobs, text), "--run-dir", "runs/flaky")
    assert code == 1 and "training failed (RuntimeError: the GPU caught fire)" in err
    assert err.strip().splitlines()[-1].startswith("gradloop: error: ")
    assert not (blobs / "runs").exists()


def test_a_failure_after_a_checkpoint_keeps_the_run_as_failed(blobs, capsys):
    (blobs / "flaky_zoo2.py").write_text(ZOO)
    text = GOOD_CONFIG.replace("hidden = [8]", 'name = "flaky_zoo2:flaky"\noptions = { fail_at = 6 }')
    text = text.replace("max_epochs = 1", "max_epochs = 3") + "[callbacks.model_checkpoint]\n"
    code, _, err = run(capsys, "fit", config(blobs, text), "--run-dir", "runs/flaky")
    assert code == 1 and "gradloop resume runs/flaky" in err
    record = json.loads((blobs / "runs/flaky/run.json").read_text())
    assert record["status"] == "failed" and "the GPU caught fire" in record["error"]
    assert "failed" in run(capsys, "runs")[1]


# ------------------------------------------------------------------------------------ the real command
@pytest.mark.parametrize(
    "args, expected",
    [
        (["fit", "run.toml", "--set", "train.lrr=1"], "'train.lrr' (did you mean 'train.lr'?)"),
        (["fit", "run.toml", "--set", 'data.path="gone.csv"'], "'gone.csv' does not exist"),
    ],
)
def test_subprocess_exit_code_and_one_line(blobs, args, expected):
    config(blobs, GOOD_CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-m", "gradloop", *args], cwd=blobs, env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2 and process.stdout == ""
    assert process.stderr.count("\n") == 1 and process.stderr.startswith("gradloop: error: ") and expected in process.stderr
    assert not (blobs / "runs").exists()
