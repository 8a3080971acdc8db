"""`gradloop fit` and `gradloop resume` under real torchrun (2 Gloo ranks): one run directory that
rank 0 alone creates, fills with its settings and prints about; `[train] strategy` picks DDP or FSDP."""

import json

from gradloop.persistence.weights import read_weights
from helpers import torchrun

CONFIG = """
[data]
name = "iris"
batch_size = 16

[model]
name = "mlp"
hidden = [16]

[train]
max_epochs = 2
seed = 1
"""
LAUNCHER = "import sys\nfrom gradloop.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"


def gradloop_torchrun(tmp_path, *args):
    (tmp_path / "cli.py").write_text(LAUNCHER)
    (tmp_path / "run.toml").write_text(CONFIG)
    return torchrun(tmp_path / "cli.py", *args)


def epochs(run_dir):
    return (run_dir / "metrics.csv").read_text().splitlines()[1:]


def test_fit_under_torchrun_writes_one_run_dir_and_prints_once(tmp_path):
    done = gradloop_torchrun(tmp_path, "fit", tmp_path / "run.toml", "--run-dir", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("settings (saved in") == 1 and done.stdout.count("done: 2 epochs") == 1
    run = tmp_path / "run"
    assert len(epochs(run)) == 2
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    assert (run / "checkpoints" / "last.ckpt").is_file()  # DDP: rank 0's checkpoint file
    assert read_weights(run / "model.safetensors")
    assert not (tmp_path / "runs").exists()


def test_fit_under_torchrun_needs_a_run_dir(tmp_path):
    done = gradloop_torchrun(tmp_path, "fit", tmp_path / "run.toml")
    assert done.returncode != 0
    assert "under torchrun every rank writes to one run directory: name it with --run-dir DIR" in done.stderr
    assert "/gradloop/" not in done.stderr  # no frame of gradloop's: one line per rank, then torchrun's report
    assert not (tmp_path / "runs").exists()


def test_strategy_fsdp_from_the_config_shards_the_checkpoints_and_resumes(tmp_path):
    run = tmp_path / "run"
    done = gradloop_torchrun(tmp_path, "fit", tmp_path / "run.toml", "--run-dir", run, "--set", "train.strategy=fsdp")
    assert done.returncode == 0, done.stderr[-2000:]
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert 'strategy = "fsdp"' in (run / "config.toml").read_text()
    resumed = gradloop_torchrun(tmp_path, "resume", run, "--max-epochs", "3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("done: 3 epochs") == 1
    assert len(epochs(run)) == 3
