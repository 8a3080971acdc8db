"""`gradloop verify` and `gl.verify_checkpoint`: every file of a run checked, each damaged one named with its reason."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.persistence import checkpoint, finding
from helpers import BLOBS_CONFIG, run_cli, write_blobs_csv


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python-API run: 2 epochs of 4 batches, a checkpoint every 3 steps (one of them mid-epoch)."""
    run_dir = tmp_path_factory.mktemp("api") / "run"
    torch.manual_seed(0)
    X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    saver = gl.ModelCheckpoint(every_n_steps=3, every_n_epochs=None, keep=None)
    gl.Trainer(nn.Linear(4, 3), max_epochs=2, seed=0, run_dir=run_dir, callbacks=[saver]).fit((X, y), val=(X[:16], y[:16]), batch_size=16)
    return run_dir


@pytest.fixture
def run(api_run: Path, tmp_path: Path) -> Path:
    """A private copy of the run that a test may damage."""
    return Path(shutil.copytree(api_run, tmp_path / "run"))


def rewrite(path: Path, data: bytes) -> None:
    """Replaces `path`'s content without touching its hard links (best.ckpt and last.ckpt share bytes)."""
    path.unlink()
    path.write_bytes(data)


def lines_of(out: str) -> dict[str, str]:
    """verify's stdout as {file name: its line}."""
    found = {}
    for line in out.splitlines():
        names = [word.strip("'\":,") for word in line.split()]
        name = next(Path(n).name for n in names if n.endswith((".ckpt", ".pt", ".safetensors")))
        found[name] = line
    return found


def test_a_good_cli_run_verifies_file_by_file(capsys: pytest.CaptureFixture[str]) -> None:
    write_blobs_csv("blobs.csv")
    Path("blobs.toml").write_text(BLOBS_CONFIG)
    assert run_cli(capsys, "fit", "blobs.toml", "--run-dir", "r")[0] == 0
    code, out, err = run_cli(capsys, "verify", "r")
    assert code == 0, out + err
    lines = lines_of(out)
    on_disk = sorted(p.name for p in Path("r/checkpoints").iterdir()) + ["model.safetensors"]
    assert sorted(lines) == on_disk and len(out.splitlines()) == len(on_disk)
    assert all(line.startswith("ok ") for line in lines.values())
    assert "2 epochs done, step 16" in lines["last.ckpt"] and "(a resume starts here)" in lines["last.ckpt"]
    assert "1 epoch done, step 8" in lines["epoch-0-step-8.ckpt"]
    assert "67 values" in lines["model.safetensors"]  # the mlp: 4*8+8 + 8*3+3
    assert f"{len(on_disk)} files verified" in err


def test_verify_checkpoint_reads_what_a_resume_reads(api_run: Path) -> None:
    last = api_run / "checkpoints" / "last.ckpt"
    info = gl.verify_checkpoint(last)
    saved = torch.load(last, weights_only=True)
    assert (info.epoch, info.step, info.mid_epoch) == (saved["progress"]["epoch"], saved["progress"]["global_step"], False) == (2, 8, False)
    assert info.size == last.stat().st_size and info.path == last
    assert info.versions == {"gradloop": gl.__version__, "torch": str(torch.__version__)}
    mid = gl.verify_checkpoint(api_run / "checkpoints" / "epoch-0-step-3.ckpt")
    assert (mid.epoch, mid.step, mid.mid_epoch, mid.batch_in_epoch) == (0, 3, True, 3)
    assert "mid-epoch: 0 epochs done + 3 batches, step 3" in mid.describe()


def test_each_damaged_file_is_named_with_its_reason(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpts = run / "checkpoints"
    truncated, flipped = ckpts / "epoch-0-step-3.ckpt", ckpts / "epoch-1-step-6.ckpt"
    rewrite(truncated, truncated.read_bytes()[:-100])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x10
    rewrite(flipped, bytes(data))
    torch.save({"w": torch.ones(2)}, ckpts / "foreign.pt")
    (ckpts / "notes.ckpt").write_text("not a checkpoint\n" * 20)
    (ckpts / ".last.ckpt.0123456789abcdef.gradloop-tmp").write_bytes(b"partial")  # a killed writer's temp: not a checkpoint
    (run / "model.safetensors").write_bytes(b"\x00" * 40)

    code, out, err = run_cli(capsys, "verify", run)
    assert code == 1
    lines = lines_of(out)
    assert lines["epoch-0-step-3.ckpt"].startswith("FAIL") and "truncated" in lines["epoch-0-step-3.ckpt"]
    assert lines["epoch-1-step-6.ckpt"].startswith("FAIL") and "fails its checksum" in lines["epoch-1-step-6.ckpt"]
    assert lines["foreign.pt"].startswith("FAIL") and "plain torch.save file" in lines["foreign.pt"]
    assert lines["notes.ckpt"].startswith("FAIL") and "is not a gradloop checkpoint" in lines["notes.ckpt"]
    assert lines["model.safetensors"].startswith("FAIL") and "not a readable safetensors file" in lines["model.safetensors"]
    for intact in ("last.ckpt", "best.ckpt"):
        assert lines[intact].startswith("ok ")
    assert len(out.splitlines()) == len(lines) == 7 and "gradloop" + "-tmp" not in out
    assert "5 of 7 files failed" in err

    # the same reasons from the Python API, one line each
    for path, reason in [
        (truncated, "truncated"),
        (flipped, "fails its checksum"),
        (ckpts / "foreign.pt", "plain torch.save file"),
        (ckpts / "notes.ckpt", "is not a gradloop checkpoint"),
    ]:
        with pytest.raises(gl.CheckpointError, match=reason) as caught:
            gl.verify_checkpoint(path)
        assert path.name in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="does not exist"):  # CheckpointError is a ValueError
        gl.verify_checkpoint(ckpts / "missing.ckpt")


def test_a_file_with_a_good_checksum_but_not_a_training_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights_only = checkpoint.save({"model": {"w": torch.ones(2)}}, tmp_path / "weights.ckpt")
    with pytest.raises(gl.CheckpointError, match=r"weights.ckpt' is not a gradloop training state \(it lacks optimizer"):
        gl.verify_checkpoint(weights_only)
    code, out, _ = run_cli(capsys, "verify", weights_only)
    assert code == 1 and out.startswith("FAIL") and "not a gradloop training state" in out


def test_the_marked_resume_file_is_the_one_resume_takes(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    last = run / "checkpoints" / "last.ckpt"
    rewrite(last, last.read_bytes()[:-1])
    os.utime(last)  # the newest file, broken: a resume skips it
    expected = finding.latest(run / "checkpoints")
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "verify", run)
    marked = [line for line in out.splitlines() if "(a resume starts here)" in line]
    assert code == 1 and len(marked) == 1 and str(expected) in marked[0]


def test_files_given_one_by_one_and_bad_usage(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [run / "checkpoints" / "best.ckpt", run / "model.safetensors"]
    code, out, _ = run_cli(capsys, "verify", *files)
    assert code == 0 and len(out.splitlines()) == 2 and "resume" not in out  # single files: no resume order to speak of
    code, out, err = run_cli(capsys, "verify", files[0], "no-such-run")
    assert code == 2 and out == "" and err.count("\n") == 1 and "'no-such-run' does not exist" in err
    Path("empty").mkdir()
    code, _, err = run_cli(capsys, "verify", "empty")
    assert code == 2 and "not a run directory" in err
    shutil.rmtree(run / "checkpoints")
    (run / "model.safetensors").unlink()
    code, _, err = run_cli(capsys, "verify", run)
    assert code == 2 and "nothing to verify" in err


def test_the_console_command_exit_codes(run: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gradloop", "verify", str(run)]
    assert subprocess.run(command, capture_output=True, text=True, env=env, timeout=120).returncode == 0
    (run / "checkpoints" / "best.ckpt").unlink()
    (run / "checkpoints" / "best.ckpt").write_text("junk")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "FAIL" in done.stdout and "best.ckpt" in done.stdout


@pytest.mark.parametrize("command", ["verify", "report"])
def test_the_new_commands_have_help_with_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and "examples:" in out and f"gradloop {command}" in out
    code, out, _ = run_cli(capsys, "--help")
    assert command in out
