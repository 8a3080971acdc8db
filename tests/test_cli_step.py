"""`[train] step = "package.module:function"`: the CLI imports the step from the config's folder and
trains with it (`gl.Trainer(step=...)`), chooses no loss and no metrics for it, evaluates with it,
predicts with the model's forward, hands it to the doctor; a bad spec is one line, exit 2."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import BLOBS_CONFIG, write_blobs_csv
from helpers import run_cli as run

STEPS = '''
import torch
import torch.nn.functional as F
from torch import nn


def l2_step(model, batch):
    x, y = batch
    out = model(x)
    l2 = sum((p ** 2).sum() for p in model.parameters())
    return {"loss": F.cross_entropy(out, y) + 1e-4 * l2, "l2": l2.detach()}


def broken_step(model, batch):
    raise RuntimeError("the step is broken")


class Pair(nn.Module):
    """Returns (logits, features): fine for a step, not for predict."""

    def __init__(self, features, classes):
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        out = self.fc(x)
        return out, x


def pair_model(input_shape, num_outputs):
    return Pair(input_shape[0], num_outputs)


def pair_step(model, batch):
    x, y = batch
    out, _ = model(x)
    return F.cross_entropy(out, y)


NOT_A_FUNCTION = 3
'''

CONFIG = BLOBS_CONFIG + "lr = 0.01\n"


def folder(root: Path, module: str, train: str, model: str = "") -> Path:
    """blobs.csv, the step module (under a name unique to the test: this process caches imports) and run.toml."""
    write_blobs_csv(root / "blobs.csv", n=120)
    (root / f"{module}.py").write_text(STEPS)
    text = CONFIG.replace("[train]\n", f"[train]\n{train}\n")
    if model:
        text = text.replace("hidden = [8]", model)
    (root / "run.toml").write_text(text)
    return root / "run.toml"


def usage_error(capsys, *args) -> str:
    code, _, err = run(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradloop: error: "), err
    return lines[0]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def step_run(tmp_path_factory):
    """`gradloop fit` in a subprocess, on a config whose step lives beside it (not on the CWD)."""
    root = tmp_path_factory.mktemp("step_run")
    config = folder(root, "steps_for_fit", 'step = "steps_for_fit:l2_step"')
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    process = subprocess.run(
        [sys.executable, "-m", "gradloop", "fit", str(config), "--run-dir", str(root / "runs" / "l2")],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return root, root / "runs" / "l2", process


def test_fit_with_a_step_logs_its_values_and_chooses_no_loss_or_metrics(step_run):
    root, run_dir, process = step_run
    assert process.returncode == 0, f"stdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    rows = read_rows(run_dir / "metrics.csv")
    assert len(rows) == 2 and {"loss", "l2", "val_loss", "val_l2"} <= set(rows[0])
    assert not any("accuracy" in name for name in rows[0])  # metrics default to none with a step
    assert all(float(row["l2"]) > 0 for row in rows)
    saved = (run_dir / "config.toml").read_text()
    assert 'step = "steps_for_fit:l2_step"' in saved and "metrics = []" in saved and "loss =" not in saved
    assert "l2 " in process.stdout and "val_l2 " in process.stdout


def test_eval_and_predict_work_on_a_run_trained_with_a_step(step_run, capsys, tmp_path):
    root, run_dir, process = step_run
    assert process.returncode == 0, process.stderr
    code, out, err = run(capsys, "eval", run_dir)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("val"))
    last = read_rows(run_dir / "metrics.csv")[-1]
    assert f"val_loss {float(last['val_loss']):.4f}" in line and f"val_l2 {float(last['val_l2']):.4f}" in line
    write_blobs_csv(tmp_path / "new.csv", n=5, seed=3, with_target=False)
    code, out, err = run(capsys, "predict", run_dir, tmp_path / "new.csv")
    assert code == 0, err
    assert out.splitlines()[0] == "prediction,prob_cat,prob_dog,prob_eel" and len(out.splitlines()) == 6


def test_resume_imports_the_step_from_the_config_folder(step_run, capsys):
    root, run_dir, process = step_run
    assert process.returncode == 0, process.stderr
    code, out, err = run(capsys, "resume", run_dir, "--max-epochs", "3")
    assert code == 0, err
    rows = read_rows(run_dir / "metrics.csv")
    assert len(rows) == 3 and rows[-1]["l2"]


def test_predict_refuses_a_forward_that_gives_no_predictions_in_one_line(tmp_path, capsys):
    config = folder(tmp_path, "steps_for_pair", 'step = "steps_for_pair:pair_step"', model='name = "steps_for_pair:pair_model"')
    code, _, err = run(capsys, "fit", config, "--run-dir", tmp_path / "runs" / "pair")
    assert code == 0, err
    message = usage_error(capsys, "predict", tmp_path / "runs" / "pair", tmp_path / "blobs.csv")
    assert "train.step 'steps_for_pair:pair_step'" in message and "make model(x) return the predictions" in message
    code, out, err = run(capsys, "eval", tmp_path / "runs" / "pair")  # eval runs the step: fine
    assert code == 0 and "val_loss" in out, err


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("steps_for_bad", "must look like 'package.module:function'"),
        (":l2_step", "must look like 'package.module:function'"),
        ("no_such_steps_module:l2_step", "cannot import 'no_such_steps_module'"),
        ("steps_for_bad:l2_stp", "has no attribute 'l2_stp' (did you mean 'l2_step'?)"),
        ("steps_for_bad:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is not callable"),
    ],
)
def test_a_bad_step_spec_is_one_line_naming_the_key_and_the_fix(tmp_path, capsys, spec, expected):
    config = folder(tmp_path, "steps_for_bad", f'step = "{spec}"')
    for command in ("fit", "doctor"):
        message = usage_error(capsys, command, config, *(["--run-dir", tmp_path / "runs" / "bad"] if command == "fit" else []))
        assert "train.step" in message and expected in message, message
    fixes = ("e.g. 'mycode:my_step'", "beside the config file or on PYTHONPATH", "name a function")
    assert any(fix in message for fix in fixes), message
    assert not (tmp_path / "runs").exists()


def test_a_step_that_fails_on_the_data_is_refused_before_training(tmp_path, capsys):
    config = folder(tmp_path, "steps_for_broken", 'step = "steps_for_broken:broken_step"')
    message = usage_error(capsys, "fit", config, "--run-dir", tmp_path / "runs" / "broken")
    assert "with train.step 'steps_for_broken:broken_step' does not fit the data" in message and "the step is broken" in message
    assert not (tmp_path / "runs").exists()


def test_metrics_given_with_a_step_without_outputs_are_refused(tmp_path, capsys):
    config = folder(tmp_path, "steps_for_metrics", 'step = "steps_for_metrics:l2_step"\nmetrics = ["accuracy"]')
    message = usage_error(capsys, "fit", config, "--run-dir", tmp_path / "runs" / "m")
    assert "need outputs and targets" in message


def test_doctor_runs_the_step(tmp_path, capsys):
    config = folder(tmp_path, "steps_for_doctor", 'step = "steps_for_doctor:l2_step"')
    code, out, err = run(capsys, "doctor", config)
    assert code == 0, out + err
    assert "PASS  train.gradients" in out and "the step does not return outputs and targets" in out
    config = folder(tmp_path, "steps_for_doctor_broken", 'step = "steps_for_doctor_broken:broken_step"')
    code, out, err = run(capsys, "doctor", config)
    assert code == 1 and "FAIL  model.output" in out and "the step is broken" in out, out + err
