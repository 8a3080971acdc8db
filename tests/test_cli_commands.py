"""Every `gradloop` command end to end on small files the tests write.

Each command runs at least once in a subprocess (`python -m gradloop`, and the console script for
the demo); follow-up calls on the same run go through `main()` in this process, which is the same
code path without another interpreter start-up (torch and scikit-learn imports take seconds).
"""

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradloop.cli.main import main
from helpers import LABELS, run_cli, write_blobs_csv


def gradloop(*args, cwd, timeout=240):
    """Runs `python -m gradloop ARGS` (the console script's code) and returns the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "gradloop", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def cli(capsys, *args):
    """`gradloop ARGS` in this process, which must succeed: (stdout, stderr)."""
    code, out, err = run_cli(capsys, *args)
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def ok(process):
    assert process.returncode == 0, f"exit {process.returncode}\nstdout:\n{process.stdout}\nstderr:\n{process.stderr}"
    return process


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def without_time(path):
    return [{k: v for k, v in row.items() if k != "time"} for row in read_rows(path)]


CSV_CONFIG = """
[data]
path = "blobs.csv"
target = "animal"
batch_size = 16
[model]
name = "mlp"
hidden = [16]
[train]
max_epochs = 4
lr = 0.01
"""


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """One trained run on a CSV with text labels, shared by the eval/predict/runs/plot tests."""
    root = tmp_path_factory.mktemp("csv_run")
    labels = write_blobs_csv(root / "blobs.csv")
    (root / "blobs.toml").write_text(CSV_CONFIG)
    process = ok(gradloop("fit", "blobs.toml", "--run-dir", "runs/blobs", cwd=root))
    return root, root / "runs" / "blobs", labels, process


def test_fit_prints_settings_device_parameters_progress_and_summary(csv_run):
    root, run, _, process = csv_run
    out = process.stdout
    assert 'path="' in out and 'target="animal"' in out and 'loss="cross_entropy"' in out
    assert "device:  cpu" in out and "parameters" in out
    assert out.count("epoch ") >= 4 and "epoch 4/4" in out
    assert "best epoch:" in out and "best val accuracy:" in out and f"gradloop resume {Path('runs/blobs')}" in out
    for name in ("config.toml", "data.json", "metrics.csv", "model.safetensors", "run.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    spec = json.loads((run / "data.json").read_text())
    assert spec["classes"] == LABELS and spec["features"] == ["f1", "f2", "f3", "f4"] and spec["scale"] == "feature"
    assert len(read_rows(run / "metrics.csv")) == 4


def test_predict_round_trips_label_names(csv_run, capsys):
    root, run, labels, _ = csv_run
    ok(gradloop("predict", run, "blobs.csv", "--out", "preds.csv", cwd=root))
    rows = read_rows(root / "preds.csv")
    assert list(rows[0]) == ["prediction", "prob_cat", "prob_dog", "prob_eel"]
    assert len(rows) == len(labels)
    assert {r["prediction"] for r in rows} <= set(LABELS)
    assert np.mean([r["prediction"] == label for r, label in zip(rows, labels)]) > 0.9
    for r in rows:
        probs = [float(r[f"prob_{name}"]) for name in LABELS]
        assert abs(sum(probs) - 1) < 1e-4 and r["prediction"] == LABELS[int(np.argmax(probs))]
    write_blobs_csv(root / "unlabelled.csv", n=5, seed=1, with_target=False)
    stdout, _ = cli(capsys, "predict", run, root / "unlabelled.csv")  # CSV on stdout
    assert stdout.splitlines()[0] == "prediction,prob_cat,prob_dog,prob_eel" and len(stdout.splitlines()) == 6


def test_eval_reproduces_the_validation_metric(csv_run, capsys):
    root, run, _, _ = csv_run
    out = ok(gradloop("eval", run, cwd=root)).stdout
    last = read_rows(run / "metrics.csv")[-1]
    line = next(line for line in out.splitlines() if line.startswith("val"))
    assert f"val_loss {float(last['val_loss']):.4f}" in line
    assert f"val_accuracy {float(last['val_accuracy']):.4f}" in line
    assert "30 samples" in line
    other = root / "other.csv"
    write_blobs_csv(other, n=40, seed=5)
    out, _ = cli(capsys, "eval", run, "--data", other)
    assert "test" in out and "40 samples" in out and "test_accuracy" in out


def test_runs_table_and_plot(csv_run):
    root, run, _, _ = csv_run
    out = ok(gradloop("runs", cwd=root)).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["run", "dataset", "model", "epochs", "best", "final", "status"]
    assert row.split()[:4] == ["blobs", "blobs.csv", "mlp", "4/4"] and row.rstrip().endswith("finished")
    assert "val_loss" in row and "val_accuracy" in row
    ok(gradloop("plot", run, cwd=root))
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_config_and_seed_give_identical_metrics_and_the_saved_config_reproduces(csv_run, tmp_path, capsys):
    root, run, _, _ = csv_run
    cli(capsys, "fit", run / "config.toml", "--run-dir", tmp_path / "again")
    assert without_time(tmp_path / "again" / "metrics.csv") == without_time(run / "metrics.csv")
    assert (tmp_path / "again" / "config.toml").read_text() == (run / "config.toml").read_text()


def test_resume_continues_bit_identically(tmp_path, capsys):
    write_blobs_csv(tmp_path / "blobs.csv")
    (tmp_path / "blobs.toml").write_text(CSV_CONFIG.replace("max_epochs = 4", "max_epochs = 2") + "[callbacks.model_checkpoint]\n")
    cli(capsys, "fit", "blobs.toml", "--run-dir", "runs/a")
    assert (tmp_path / "runs/a/checkpoints/last.ckpt").is_file()
    resumed = ok(gradloop("resume", "runs/a", "--max-epochs", "4", cwd=tmp_path))
    assert "resuming from" in resumed.stderr and "epoch 3/4" in resumed.stdout
    cli(capsys, "fit", "blobs.toml", "--set", "train.max_epochs=4", "--run-dir", "runs/b")
    assert without_time(tmp_path / "runs/a/metrics.csv") == without_time(tmp_path / "runs/b/metrics.csv")
    assert "max_epochs = 4" in (tmp_path / "runs/a/config.toml").read_text()


def test_sigterm_marks_the_run_interrupted_and_resume_finishes_it(tmp_path, capsys):
    (tmp_path / "long.toml").write_text(
        '[data]\nname = "digits"\nbatch_size = 8\n[model]\nhidden = [256]\n[train]\nmax_epochs = 200\n[callbacks.model_checkpoint]\n'
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gradloop", "fit", "long.toml", "--run-dir", "runs/long"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in process.stdout:
            if line.startswith("epoch"):
                break
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "gradloop resume runs/long" in stderr
    record = json.loads((tmp_path / "runs/long/run.json").read_text())
    assert record["status"] == "interrupted"
    assert "interrupted" in cli(capsys, "runs")[0]
    assert "(weights: last.ckpt)" in cli(capsys, "eval", "runs/long")[0]  # no model.safetensors before the end
    done = len(read_rows(tmp_path / "runs/long/metrics.csv"))
    cli(capsys, "resume", "runs/long", "--max-epochs", str(done + 1))
    assert json.loads((tmp_path / "runs/long/run.json").read_text())["status"] == "finished"
    assert len(read_rows(tmp_path / "runs/long/metrics.csv")) == done + 1


def test_npz_regression_predicts_values(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    y = X @ np.array([2.0, -1.0, 0.5]) * 10 + 50
    np.savez(tmp_path / "reg.npz", X=X, y=y)
    (tmp_path / "reg.toml").write_text('[data]\npath = "reg.npz"\n[model]\nhidden = [16]\n[train]\nmax_epochs = 30\nlr = 0.01\n')
    out, _ = cli(capsys, "fit", "reg.toml", "--run-dir", "runs/reg")
    assert 'loss="mse"' in out and 'metrics=["mae", "r2"]' in out
    last = read_rows(tmp_path / "runs/reg/metrics.csv")[-1]
    assert float(last["val_r2"]) > 0.8
    np.savez(tmp_path / "new.npz", X=X[:4])
    rows = list(csv.DictReader(cli(capsys, "predict", "runs/reg", "new.npz")[0].splitlines()))
    assert list(rows[0]) == ["prediction"]
    np.testing.assert_allclose([float(r["prediction"]) for r in rows], y[:4], atol=15)


def test_idx_folder_with_cnn_uses_t10k_as_test_set(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for split, n in (("train", 120), ("t10k", 30)):
        suffix = ".gz" if split == "train" else ""  # both kinds (test_cli_data reads each kind alone too)
        y = rng.integers(0, 3, n)
        X = rng.integers(0, 60, size=(n, 28, 28))
        for k in range(3):
            X[y == k, k * 8 : k * 8 + 6, 4:20] = 250  # a bar whose position is the class
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", X)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", y)
    (tmp_path / "mnist.toml").write_text(
        '[data]\npath = "mnist"\n[model]\nname = "cnn"\nchannels = [4, 8]\nhidden = [16]\n[train]\nmax_epochs = 3\nlr = 0.003\n'
    )
    out, _ = cli(capsys, "fit", "mnist.toml", "--run-dir", "runs/m")
    assert "input shape (28, 28)" in out and "96 train, 24 val, 30 test" in out
    out, _ = cli(capsys, "eval", "runs/m")
    assert any(line.startswith("test") and "30 samples" in line for line in out.splitlines())
    rows = list(csv.DictReader(cli(capsys, "predict", "runs/m", "mnist")[0].splitlines()))
    assert len(rows) == 30 and list(rows[0]) == ["prediction", "prob_0", "prob_1", "prob_2"]


def test_demo_writes_a_run_and_the_console_script_works(tmp_path):
    script = Path(sys.executable).parent / "gradloop"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gradloop"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    process = subprocess.run(
        [*command, "demo", "--set", "train.max_epochs=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    ok(process)
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("demo-")
    for name in ("config.toml", "metrics.csv", "model.safetensors"):
        assert (run / name).is_file()
    out = process.stdout
    assert 'name="digits"' in out and 'name="cnn"' in out and "device:" in out and "parameters" in out
    assert "epoch 1/1" in out and "best val accuracy:" in out and f"gradloop resume {Path('runs') / run.name}" in out


def test_doctor_passes_a_good_config_and_fails_on_nan(tmp_path, capsys):
    write_blobs_csv(tmp_path / "blobs.csv")
    (tmp_path / "blobs.toml").write_text(CSV_CONFIG)
    process = gradloop("doctor", "blobs.toml", cwd=tmp_path)
    assert process.returncode == 0, process.stdout + process.stderr
    assert "data.finite" in process.stdout
    text = (tmp_path / "blobs.csv").read_text().splitlines()
    text[5] = ",".join(["nan"] + text[5].split(",")[1:])
    (tmp_path / "blobs.csv").write_text("\n".join(text) + "\n")
    assert main(["doctor", "blobs.toml"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "data.finite" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["demo", "fit", "resume", "eval", "predict", "doctor", "plot", "runs"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"gradloop {command}" in out


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "fit", "resume", "eval", "predict", "doctor", "plot", "runs"):
        assert command in out
