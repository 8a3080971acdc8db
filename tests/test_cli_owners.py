"""One owner per concept: the command line asks the core (the Trainer, the monitor, the name
registries, util) instead of keeping its own copy, so it accepts and rejects what the library does."""

import json
import os
from pathlib import Path

import pytest

from gradloop.cli import rundir, summary
from gradloop.cli.config import validate
from gradloop.cli.errors import UsageError
from gradloop.cli.main import main
from gradloop.cli.session import build
from gradloop.data import devices
from gradloop.names.optim import check_optimizer_args
from gradloop.util import first_line, host_name
from helpers import BLOBS_CONFIG, run_cli

WINE = {"data": {"name": "wine"}}

BLOBS = BLOBS_CONFIG


@pytest.fixture
def blobs(tmp_path):
    rows = ["f1,f2,animal"] + [f"{i % 7 - 3},{(i * 5) % 11 - 5},{'cat dog eel'.split()[i % 3]}" for i in range(60)]
    (tmp_path / "blobs.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def run(capsys, tmp_path, text, *args):
    """(exit code, stdout, stderr) of `gradloop fit run.toml ARGS` with `text` as the config."""
    (tmp_path / "run.toml").write_text(text)
    return run_cli(capsys, "fit", "run.toml", *args)


def fit_error(capsys, tmp_path, text):
    """The one line `gradloop fit` reports for a bad config (exit 2, no run directory left)."""
    code, _, err = run(capsys, tmp_path, text, "--run-dir", "runs/bad")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gradloop: error: "), err
    assert not Path("runs/bad").exists()
    return lines[0]


# ------------------------------------------------------------------------------------ monitors
def test_grad_norm_is_a_monitor_when_grad_clip_norm_is_set(blobs, capsys):
    """The Trainer logs grad_norm with grad_clip_norm: the CLI asks it what is logged."""
    callbacks = '[callbacks.early_stopping]\nmonitor = "grad_norm"\nmode = "min"\npatience = 5\n'
    text = BLOBS.replace("[train]", "[train]\ngrad_clip_norm = 1.0") + callbacks
    code, out, err = run(capsys, blobs, text, "--run-dir", "runs/clipped")
    assert code == 0, err
    assert json.loads((blobs / "runs/clipped/run.json").read_text())["status"] == "finished"
    line = fit_error(capsys, blobs, BLOBS + callbacks)  # without clipping: not logged
    assert "EarlyStopping monitors 'grad_norm', which is not logged; available: loss, accuracy" in line


def test_a_monitor_without_a_direction_fails_before_anything_is_written(blobs, capsys):
    text = BLOBS.replace("[train]", "[train]\ngrad_clip_norm = 1.0") + '[callbacks.early_stopping]\nmonitor = "grad_norm"\n'
    line = fit_error(capsys, blobs, text)
    assert "[callbacks.early_stopping]: cannot tell whether monitor='grad_norm' should be minimized" in line


def test_the_default_monitor_falls_back_to_loss_with_the_callbacks_note(blobs, capsys):
    text = BLOBS.replace("batch_size = 16", "batch_size = 16\nval_split = 0") + "[callbacks.early_stopping]\n"
    code, _, err = run(capsys, blobs, text, "--run-dir", "runs/noval")
    assert code == 0, err
    assert err.count("EarlyStopping monitors 'loss' (no validation data") == 1, err
    line = fit_error(capsys, blobs, text + 'monitor = "val_loss"\n')  # named: never falls back
    assert "monitors 'val_loss', which is not logged" in line and "there is no validation data" in line


# ------------------------------------------------------------------------------------ names the core owns
def config_error(raw):
    with pytest.raises(UsageError) as info:
        validate(raw, "run.toml")
    return str(info.value)


def core_error(function, *args):
    with pytest.raises((ValueError, TypeError)) as info:
        function(*args)
    return first_line(info.value)


def test_precision_names_are_the_trainers(monkeypatch):
    monkeypatch.setitem(devices.PRECISION_ALIASES, "half-mixed", "16-mixed")  # a new alias, in one place
    assert validate({**WINE, "train": {"precision": "half-mixed"}}, "x").train.precision == "16-mixed"
    for name, canonical in devices.PRECISION_ALIASES.items():
        assert validate({**WINE, "train": {"precision": name}}, "x").train.precision == canonical
    assert core_error(devices.resolve_precision, "64") in config_error({**WINE, "train": {"precision": "64"}})


@pytest.mark.parametrize("name", ["adamm", "SGDD", "lbfgs"])
def test_optimizer_names_are_checked_by_the_trainers_rule(name):
    message = config_error({**WINE, "train": {"optimizer": name}})
    assert message.startswith("run.toml: train.optimizer: ") and "\n" not in message
    assert core_error(check_optimizer_args, name, 1e-3) in message
    assert validate({**WINE, "train": {"optimizer": "AdamW"}}, "x").train.optimizer == "AdamW"  # any case, as gl.Trainer


def test_predicted_probabilities_sum_to_one_whatever_the_loss(blobs, capsys):
    """predict keeps no list of losses: softmax turns logits and log-probabilities (nll) alike into probabilities."""
    assert run(capsys, blobs, BLOBS.replace("[train]", '[train]\nloss = "nll"'), "--run-dir", "runs/nll")[0] == 0
    assert main(["predict", "runs/nll", "blobs.csv", "--out", "preds.csv"]) == 0
    rows = [line.split(",") for line in (blobs / "preds.csv").read_text().splitlines()]
    assert rows[0] == ["prediction", "prob_cat", "prob_dog", "prob_eel"]
    for row in rows[1:]:
        assert sum(map(float, row[1:])) == pytest.approx(1, abs=1e-4)


# ------------------------------------------------------------------------------------ util's helpers
def test_run_json_is_written_by_util_atomic_write(tmp_path):
    """A fixed temp name followed a link planted under it; util.atomic_write never follows one."""
    (tmp_path / "victim.txt").write_text("keep me")
    (tmp_path / ".run.json.tmp").symlink_to(tmp_path / "victim.txt")
    rundir.write_run(tmp_path, status="running")
    rundir.write_run(tmp_path, pid=7)
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    assert not (tmp_path / "run.json").is_symlink()
    assert json.loads((tmp_path / "run.json").read_text()) == {"status": "running", "pid": 7}


@pytest.mark.parametrize("pid", [0, -1, True, "123", None])
def test_a_running_record_without_a_live_pid_is_interrupted(pid):
    """util.pid_alive: os.kill(0 or -n, 0) asks about process groups, not the run's process."""
    record = {"status": "running", "host": host_name(), "pid": pid}
    assert rundir.effective_status(record) == "interrupted"
    assert rundir.effective_status({**record, "pid": os.getpid()}) == "running"


def test_the_run_recorder_runs_after_every_other_callback(blobs, capsys):
    """Callback.priority orders hooks: "running" is recorded once every start-up check has passed."""
    recorder = rundir.RunRecorder(blobs / "runs/r", "gradloop fit")
    raw = {"data": {"path": str(blobs / "blobs.csv"), "target": "animal"}, "callbacks": {"early_stopping": {}, "model_checkpoint": {}}}
    trainer = build(validate(raw, "x"), run_dir=blobs / "runs/r", extra_callbacks=[recorder]).trainer
    assert trainer.callbacks.callbacks[-1] is recorder
    assert all(c.priority < recorder.priority for c in trainer.callbacks.callbacks[:-1])


def test_runs_lists_a_run_whose_metrics_csv_is_unreadable(tmp_path, capsys):
    """util.read_metrics_csv raises ValueError for a file that is not text: the table shows '-'."""
    (tmp_path / "runs/broken").mkdir(parents=True)
    (tmp_path / "runs/broken/metrics.csv").write_bytes(b"epoch,loss\n\xff\xfe\x00\x81\n")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == ["broken", "-"]
    assert summary.read_metrics(tmp_path / "none.csv") == []


# ------------------------------------------------------------------------------------ torchrun
def test_under_torchrun_only_rank_zero_writes_run_json(tmp_path, monkeypatch):
    """data.distributed.is_rank_zero decides (from RANK/WORLD_SIZE until a process group exists)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    recorder = rundir.RunRecorder(tmp_path, "gradloop fit run.toml")
    recorder.on_fit_start(None)
    recorder.finish("finished")
    assert recorder.started and not (tmp_path / "run.json").exists()  # started: rank 1 never discards the run
    monkeypatch.setenv("RANK", "0")
    recorder.on_fit_start(None)
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
