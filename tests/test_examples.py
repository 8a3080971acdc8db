"""The programs in examples/ run as they are: each in a fresh process, with flags that keep it short."""

import gzip
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")  # two cores shared by parallel tests
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"{name} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def number_after(label, text):
    match = re.search(rf"{label} (\S+)", text)
    assert match, f"no {label!r} in the output:\n{text}"
    return float(match.group(1))


def write_idx(path, array):
    """An IDX file of unsigned bytes, as MNIST is distributed (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_tiny_mnist(folder, suffix, train=256, test=64):
    """Images with a bright band whose position is the label, so there is something to learn."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for prefix, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):
            image[2 + 2 * label : 4 + 2 * label] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return folder


def final_line(text):
    lines = [line for line in text.splitlines() if line.startswith("final ")]
    assert lines, f"no 'final ...' line in the output:\n{text}"
    return lines[-1]


def load_example(name):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simple_net(tmp_path):
    out = run_example("simple_net.py", "--epochs", 3, cwd=tmp_path)
    assert out.count("epoch ") >= 3
    assert math.isfinite(number_after("loss", final_line(out)))
    assert 0.0 <= number_after("accuracy", final_line(out)) <= 1.0


def test_mnist_mlp_on_the_digits(tmp_path):
    out = run_example("mnist_mlp.py", "--epochs", 1, cwd=tmp_path)
    assert "8x8 digits" in out
    assert number_after("test accuracy", out) > 0.3  # chance is 0.1; one epoch reaches about 0.7


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_mlp_reads_an_idx_folder(tmp_path, suffix):
    folder = write_tiny_mnist(tmp_path / "mnist", suffix)
    out = run_example("mnist_mlp.py", folder, "--epochs", 2, cwd=tmp_path)
    assert "digits" not in out
    assert number_after("test accuracy", out) > 0.5  # the bands are easy; misread files stay near chance (0.1)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips(tmp_path, suffix):
    read_idx = load_example("mnist_mlp.py").read_idx
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / f"images{suffix}", images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"images{suffix}"), images)


def test_read_idx_rejects_other_files(tmp_path):
    read_idx = load_example("mnist_mlp.py").read_idx
    (tmp_path / "notes.txt").write_text("not an IDX file")
    with pytest.raises(SystemExit, match="not an IDX file"):
        read_idx(tmp_path / "notes.txt")
    write_idx(tmp_path / "short", np.zeros((4, 28, 28), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-10])
    with pytest.raises(SystemExit, match="truncated"):
        read_idx(tmp_path / "short")


def test_wine_callbacks(tmp_path):
    out = run_example("wine_callbacks.py", "--epochs", 3, "--run-dir", "run", cwd=tmp_path)
    assert 0.5 < number_after("val_accuracy", final_line(out)) <= 1.0  # chance is 1/3
    run = tmp_path / "run"
    assert (run / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "metrics.csv").is_file()


def epoch_line(label, text):
    """The values of the line that starts with `label` (e.g. "final:"), as {"loss": 12.3, "recon": 10.1, ...}."""
    lines = [line for line in text.splitlines() if line.startswith(label)]
    assert lines, f"no {label!r} line in the output:\n{text}"
    words = lines[-1].removeprefix(label).split()
    return {name: float(value) for name, value in zip(words[::2], words[1::2])}


def test_vae_logs_reconstruction_and_kl(tmp_path):
    out = run_example("vae.py", "--epochs", 3, "--run-dir", "run", cwd=tmp_path)
    first, final = epoch_line("first:", out), epoch_line("final:", out)
    assert set(final) == {"loss", "recon", "kl"}
    assert all(math.isfinite(v) for v in final.values())
    assert final["loss"] < first["loss"]  # about 44 -> 39 per image in 3 epochs
    assert final["loss"] == pytest.approx(final["recon"] + final["kl"], abs=1e-3)
    header, *rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert {"loss", "recon", "kl", "val_loss", "val_recon", "val_kl"} <= set(header.split(","))
    assert len(rows) == 3


def test_two_inputs(tmp_path):
    out = run_example("two_inputs.py", "--epochs", 10, cwd=tmp_path)
    assert "12 numeric features and 1 categorical" in out
    assert number_after("val_accuracy", final_line(out)) > 0.85  # chance is 1/3; 10 epochs reach about 1.0
    assert out.count("predicted probabilities") == 3


def test_text_classifier_with_its_own_loss(tmp_path):
    out = run_example("text_classifier.py", "--epochs", 3, "--samples", 1000, cwd=tmp_path)
    assert number_after("val_accuracy", final_line(out)) > 0.9  # chance is 0.5; 3 epochs reach about 1.0
    assert "first 4 validation sequences: predicted" in out


def test_sine_lbfgs(tmp_path):
    out = run_example("sine_lbfgs.py", "--epochs", 2, "--waves", 10, "--length", 100, "--future", 20, cwd=tmp_path)
    first, final = number_after("first loss", out), number_after("final loss", out)
    assert math.isfinite(final) and final < first
    assert math.isfinite(number_after("mse", out))
