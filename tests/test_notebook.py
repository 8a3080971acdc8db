"""The progress display in a real Jupyter kernel (nbclient + ipykernel), and one line per epoch through a pipe."""

import json
import re
import subprocess
import sys
import textwrap

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TRAIN = textwrap.dedent("""
    import torch
    from torch import nn
    import gradloop as gl

    torch.set_num_threads(1)
    torch.manual_seed(0)
    X = torch.randn(256, 4)
    y = (X[:, 0] > 0).long()
    trainer = gl.Trainer(nn.Linear(4, 2), max_epochs=3, device="cpu")
    history = trainer.fit((X, y), val=(X[:64], y[:64]), batch_size=8)
""")


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernel spec for this interpreter (the venv's), found through a private JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "gradloop-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "gradloop test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "gradloop-test"


def plain(text):
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_notebook(tmp_path, kernel_name, *cells):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(notebook, kernel_name=kernel_name, timeout=180, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return notebook


def test_a_notebook_shows_a_live_bar_that_is_updated_in_place(tmp_path, kernel_name):
    notebook = run_notebook(tmp_path, kernel_name, TRAIN, "print(len(history.epochs))")
    outputs = notebook.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"], outputs
    displays = [o for o in outputs if o.output_type == "display_data"]
    assert len(displays) == 1  # one display per fit, updated in place (nbclient applies the updates)
    html, text = displays[0].data["text/html"], plain(displays[0].data["text/plain"])
    assert "<pre" in html and "━" in html  # rich's bar, rendered as HTML for the notebook (text/plain: with ANSI colours)
    assert re.search(r"epoch 3/3 .*━+ 32/32  loss \d\.\d{4}  [\d,.]+ it/s", text), text  # left showing the last epoch, complete
    stdout = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    lines = stdout.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert re.fullmatch(r"epoch 3/3  loss \d\.\d{4}  accuracy \d\.\d{4}  val_loss .* lr 0\.001  \d+\.\ds", lines[-1])
    assert "\x1b[" not in stdout
    assert notebook.cells[1].outputs[0].text == "3\n"


def test_a_second_fit_in_another_cell_gets_its_own_display(tmp_path, kernel_name):
    notebook = run_notebook(tmp_path, kernel_name, TRAIN, "trainer.max_epochs = 1\ntrainer.fit((X, y), batch_size=64)")
    first = [o for o in notebook.cells[0].outputs if o.output_type == "display_data"]
    second = [o for o in notebook.cells[1].outputs if o.output_type == "display_data"]
    assert len(first) == len(second) == 1
    assert "epoch 3/3" in first[0].data["text/plain"]  # the first cell's bar was not overwritten
    assert re.search(r"epoch 1/1 ━+ 4/4", plain(second[0].data["text/plain"]))


def test_a_pipe_gets_one_plain_line_per_epoch(tmp_path):
    done = subprocess.run([sys.executable, "-c", TRAIN], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [line.split("  ")[0] for line in done.stdout.splitlines()] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "\x1b[" not in done.stdout and "\r" not in done.stdout and "━" not in done.stdout
