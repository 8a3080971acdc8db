"""`gradloop report`: one self-contained HTML page, checked in a real headless Chromium (no network).

The plotted series are read back from the page two ways and compared with each run's metrics.csv:
the embedded JSON block, and the SVG polylines' points (as the browser parsed them) mapped back
through each chart's data domain and plot area.
"""

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.cli.main import main
from gradloop.util import read_metrics_csv
from helpers import BLOBS_CONFIG, run_cli, write_blobs_csv

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SLOW_LR, FAST_LR = "lr-0.001", "lr-0.01 <i>&"  # the second name also tests escaping in the page


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two CLI runs of the blobs CSV, 3 epochs each, that differ only in their learning rate."""
    root = tmp_path_factory.mktemp("runs")
    write_blobs_csv(root / "blobs.csv")
    (root / "blobs.toml").write_text(BLOBS_CONFIG.replace("max_epochs = 2", "max_epochs = 3"))
    made = []
    for name, lr in ((SLOW_LR, "0.001"), (FAST_LR, "0.01")):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(["fit", str(root / "blobs.toml"), "--set", f"train.lr={lr}", "--run-dir", str(root / name)])
        assert code == 0
        made.append(root / name)
    return made


def page_data(html: str) -> dict:
    start = html.index('<script type="application/json" id="gradloop-data">') + len('<script type="application/json" id="gradloop-data">')
    return json.loads(html[start : html.index("</script>", start)])


READ_CHARTS = """() => [...document.querySelectorAll('svg.chart')].map(svg => ({
  quantity: svg.dataset.quantity,
  domain: ['xMin', 'xMax', 'yMin', 'yMax'].map(k => Number(svg.dataset[k])),
  plot: ['plotX', 'plotY', 'plotWidth', 'plotHeight'].map(k => Number(svg.dataset[k])),
  lines: [...svg.querySelectorAll('polyline.series')].map(p => ({
    run: p.dataset.run, split: p.dataset.split, column: p.dataset.column,
    epochs: p.dataset.epochs.split(' ').map(Number),
    points: [...p.points].map(q => [q.x, q.y]),
  })),
}))"""


def test_the_page_in_chromium_shows_exactly_the_runs_metrics(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: the report's browser test cannot run")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: the report's browser test cannot run")
    out = tmp_path / "compare.html"
    code, stdout, err = run_cli(capsys, "report", *runs, "--out", out)
    assert code == 0, err
    assert f"wrote {out} (2 runs" in stdout

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors, requested = [], []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))

            def guard(route):
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    requested.append(route.request.url)
                    route.abort()

            page.route("**/*", guard)
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            shot = page.screenshot(full_page=True)
            chart_shot = page.locator("svg.chart").first.screenshot()
            charts = page.evaluate(READ_CHARTS)
            data = json.loads(page.locator("#gradloop-data").text_content())
            title = page.title()
            differing = page.eval_on_selector_all('table.settings tr[data-differs="true"]', "rows => rows.map(r => r.dataset.setting)")
            marks = page.eval_on_selector_all('table.settings tr[data-differs="true"] td.mark', "cells => cells.map(c => c.textContent)")
            all_rows = page.locator("table.settings tbody tr").count()
            page.check("#only-differences")
            shown = page.eval_on_selector_all("table.settings tbody tr", "rows => rows.filter(r => r.offsetParent !== null).length")
            verified = page.eval_on_selector_all("table.files tr[data-file]", "rows => rows.map(r => [r.dataset.file, r.dataset.verified])")
        finally:
            browser.close()

    assert errors == [] and requested == []
    from PIL import Image

    assert len(Image.open(io.BytesIO(shot)).convert("RGB").getcolors(1 << 24)) > 200  # text, tables, coloured lines: not blank
    assert len(Image.open(io.BytesIO(chart_shot)).convert("RGB").getcolors(1 << 24)) > 20
    assert FAST_LR in title and [r["label"] for r in data["runs"]] == [SLOW_LR, FAST_LR]

    expected = {run.name: read_metrics_csv(run / "metrics.csv") for run in runs}
    assert {r["label"]: r["metrics"] for r in data["runs"]} == expected  # the embedded data: metrics.csv exactly

    # the drawn lines: one point per epoch, at the right place on each chart's axes
    assert [c["quantity"] for c in charts] == ["loss", "accuracy", "lr"]
    drawn = {}
    for chart in charts:
        (x_min, x_max, y_min, y_max), (left, top, width, height) = chart["domain"], chart["plot"]
        for line in chart["lines"]:
            assert line["column"].removeprefix("val_") == chart["quantity"]
            assert line["split"] == ("val" if line["column"].startswith("val_") else "train")
            epochs = [x_min + (x - left) / width * (x_max - x_min) for x, _ in line["points"]]
            values = [y_min + (top + height - y) / height * (y_max - y_min) for _, y in line["points"]]
            assert epochs == pytest.approx(line["epochs"], abs=1e-3)
            drawn[line["run"], line["column"]] = (line["epochs"], values, (y_max - y_min) * 1e-4)
    columns = ["loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert sorted(drawn) == sorted((run, column) for run in expected for column in columns)
    for (run, column), (epochs, values, tolerance) in drawn.items():
        rows = expected[run]
        assert epochs == [row["epoch"] for row in rows] == [0, 1, 2]
        assert values == pytest.approx([row[column] for row in rows], abs=tolerance)

    # the settings side by side: only the learning rate differs, marked, and the toggle shows it alone
    assert differing == ["train.lr"] and marks == ["≠"]
    assert all_rows > 10 and shown == 1
    on_disk = {p.name for run in runs for p in [*(run / "checkpoints").iterdir(), run / "model.safetensors"]}
    assert {name for name, _ in verified} == on_disk and all(ok == "true" for _, ok in verified)


def test_checkpoints_that_fail_verification_and_the_doctor_in_the_page(runs: list[Path], tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(runs[0], tmp_path / "run"))
    last = run / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    last.unlink()  # last.ckpt shares its bytes with best.ckpt (a hard link): damage this name only
    data[len(data) // 2] ^= 1
    last.write_bytes(bytes(data))
    X, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    X[3, 1] = float("nan")
    gl.doctor(nn.Linear(4, 3), (X, y), run_dir=run, checks=["data"])

    code, _, err = run_cli(capsys, "report", run)
    assert code == 0, err
    html = Path("report.html").read_text()  # the default --out: ./report.html
    files = {f["name"]: f for f in page_data(html)["runs"][0]["checkpoints"]}
    assert files["last.ckpt"]["ok"] is False and "fails its checksum" in files["last.ckpt"]["detail"]
    assert files["best.ckpt"]["ok"] is True and files["best.ckpt"]["size"] == (run / "checkpoints" / "best.ckpt").stat().st_size
    assert 'data-file="last.ckpt" data-verified="false"' in html
    doctor = json.loads((run / "doctor.json").read_text())
    assert page_data(html)["runs"][0]["doctor"] == doctor and "<h2>Doctor</h2>" in html
    failed = [c for c in doctor["checks"] if c["status"] == "fail"]
    assert failed and all(c["name"] in html for c in failed)


def test_a_python_api_run_shows_its_checkpoint_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = torch.randn(48, 4), torch.randint(0, 3, (48,))
    for name, lr in (("a", 0.1), ("b", 0.05)):
        trainer = gl.Trainer(nn.Linear(4, 3), optimizer="sgd", lr=lr, max_epochs=2, seed=0, run_dir=tmp_path / name)
        trainer.fit((X, y), batch_size=16)
    code, _, err = run_cli(capsys, "report", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "api.html")
    assert code == 0, err
    html = (tmp_path / "api.html").read_text()
    settings = [r["settings"] for r in page_data(html)["runs"]]
    assert settings[0]["optimizer.lr"] == "0.1" and settings[1]["optimizer.lr"] == "0.05"
    assert settings[0]["fit.batch_size"] == "16" and settings[0]["fit.optimizer"] == '"SGD"'
    assert 'data-setting="optimizer.lr" data-differs="true"' in html
    assert 'data-setting="fit.batch_size" data-differs="false"' in html
    assert "No doctor findings" in html and "<h2>Doctor</h2>" not in html  # no doctor.json: the section is left out


def test_bad_input_is_one_line_and_writes_nothing(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("not-a-run").mkdir()
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "metrics.csv").write_text("epoch,loss\n")
    cases = [
        (["no-such-dir"], "run directory 'no-such-dir' does not exist"),
        (["not-a-run"], "'not-a-run' has no metrics.csv"),
        ([runs[0], tmp_path / "started"], "has no epochs yet"),
        ([runs[0], "--out", "not-a-run"], "is a directory"),
    ]
    for args, message in cases:
        code, out, err = run_cli(capsys, "report", *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, (args, err)
    assert not Path("report.html").exists() and sorted(p.name for p in Path("not-a-run").iterdir()) == []


def test_a_value_that_is_not_finite_breaks_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "diverged"
    run.mkdir()
    (run / "metrics.csv").write_text(
        "epoch,loss,val_loss,lr,time\n0,1.5,1.4,0.1,1\n1,0.9,,0.1,1\n2,nan,1.1,0.1,1\n3,0.7,inf,0.1,1\n4,0.6,1.0,0.1,1\n"
    )
    code, _, err = run_cli(capsys, "report", run)
    assert code == 0, err
    html = Path("report.html").read_text()
    lines = re.findall(r'<polyline class="series" data-run="diverged" data-split="(\w+)" data-column="(\w+)" data-epochs="([\d ]+)"', html)
    assert lines == [
        ("train", "loss", "0 1"),
        ("train", "loss", "3 4"),
        ("val", "val_loss", "0 2"),  # epoch 1 has no val_loss: joined over
        ("val", "val_loss", "4"),
        ("train", "lr", "0 1 2 3 4"),
    ]
    assert "diverged loss: not finite at epoch 2" in html and "diverged val_loss: not finite at epoch 3" in html
    assert page_data(html)["runs"][0]["metrics"][2]["loss"] is None  # NaN: null in strict JSON
    assert "no checkpoints, no model.safetensors" in html and "none found" in html
