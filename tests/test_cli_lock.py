"""A run directory is trained by one process at a time, also from the command line."""

import os
import subprocess
import sys

from gradloop.persistence.runlock import RunLock


def test_resume_of_a_locked_run_fails_at_once_with_exit_2(tmp_path):
    config = tmp_path / "iris.toml"
    config.write_text('[data]\nname = "iris"\n[model]\nname = "mlp"\nhidden = [8]\n[train]\nmax_epochs = 1\nseed = 0\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "gradloop", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)

    assert run("fit", str(config), "--run-dir", "runs/a").returncode == 0
    with RunLock(tmp_path / "runs" / "a"):
        result = run("resume", "runs/a")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradloop: error:") and str(os.getpid()) in lines[0]
