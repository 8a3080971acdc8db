"""Run records: progress display, metrics.csv, metrics.jsonl, TensorBoard, curves.png."""

import io
import json
import math
import re
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.callbacks.logging import CSVLogger, JSONLLogger, TensorBoardLogger, read_jsonl
from gradloop.callbacks.plots import PlotCurves, curves_figure, plot_history
from gradloop.callbacks.progress import ProgressBar
from gradloop.util import read_metrics_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def make_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    return X, (X[:, 0] > 0).long()


def make_trainer(callbacks, max_epochs=3, run_dir=None, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return gl.Trainer(
        model,
        metrics=["accuracy"],
        callbacks=callbacks,
        max_epochs=max_epochs,
        run_dir=run_dir,
        device="cpu",
        default_callbacks=False,
        **kwargs,
    )


def fit(trainer, **kwargs):
    X, y = make_data()
    return trainer.fit((X, y), val=make_data(32, seed=1), batch_size=16, **kwargs)


# ---------------------------------------------------------------------------------- progress
def test_progress_off_terminal_prints_one_line_per_epoch():
    stream = io.StringIO()
    bar = ProgressBar(stream=stream)
    trainer = make_trainer([bar])
    fit(trainer)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert re.fullmatch(
            rf"epoch {i + 1}/3  loss \d\.\d{{4}}  accuracy \d\.\d{{4}}  "
            r"val_loss \d\.\d{4}  val_accuracy \d\.\d{4}  lr 0\.001  \d+\.\ds",
            line,
        ), line
    # nothing per batch: the loop does not even call a batch hook
    assert not bar.live and not bar.listens("on_train_batch_end")
    assert not trainer.callbacks.listens("on_train_batch_end")


def test_default_progress_under_capture_prints_plain_lines(capsys):
    model = nn.Linear(4, 2)
    trainer = gl.Trainer(model, max_epochs=2, device="cpu")
    trainer.fit(make_data(), batch_size=32)
    out = capsys.readouterr().out
    assert [line.split("  ")[0] for line in out.splitlines()] == ["epoch 1/2", "epoch 2/2"]
    assert "\x1b[" not in out and "\r" not in out


def test_live_progress_on_a_terminal():
    stream = FakeTerminal()
    bar = ProgressBar(stream=stream)
    assert bar.live and bar.listens("on_train_batch_end")
    trainer = make_trainer([bar], max_epochs=2)
    assert trainer.callbacks.listens("on_train_batch_end")
    fit(trainer)
    out = stream.getvalue()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    assert re.search(r"epoch 1/2 \S+ \d+/(6|\?)  loss \d\.\d{4}  [\d,.]+ it/s", plain)
    epoch_lines = [line for line in plain.replace("\r", "\n").splitlines() if re.match(r"epoch \d/2  loss", line)]
    assert len(epoch_lines) == 2
    assert out.endswith("s\n") and bar._progress is None  # the live bar is stopped at each epoch end


def test_live_progress_reads_the_loss_at_most_refresh_rate():
    class CountingLoss:
        reads = 0

        def __float__(self):
            CountingLoss.reads += 1
            return 0.5

    bar = ProgressBar(stream=FakeTerminal(), live=True, refresh_per_second=10)
    trainer = SimpleNamespace(max_epochs=1, batches_per_epoch=5000, state=gl.TrainState())
    started = time.perf_counter()
    bar.on_epoch_start(trainer)
    for _ in range(5000):
        bar.on_train_batch_end(trainer, CountingLoss())
    elapsed = time.perf_counter() - started
    bar.on_fit_end(trainer)
    assert 1 <= CountingLoss.reads <= 2 + elapsed * 10
    assert re.search(r"\d+/5000  loss 0\.5000  [\d,.]+ it/s  ETA \d+:\d\d", bar.stream.getvalue())


def test_progress_live_can_be_forced_off_and_rejects_bad_rate():
    assert not ProgressBar(stream=FakeTerminal(), live=False).live
    with pytest.raises(ValueError, match="refresh_per_second"):
        ProgressBar(refresh_per_second=0)


# ---------------------------------------------------------------------------------- csv
def test_csv_columns_and_values_equal_history(tmp_path):
    trainer = make_trainer([CSVLogger()], run_dir=tmp_path / "run")
    history = fit(trainer)
    text = (tmp_path / "run" / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert header == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"]
    assert header[1:] == list(history.epochs[0])
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert rows == [{"epoch": e, **logs} for e, logs in enumerate(history.epochs)]  # exact floats
    assert [r["val_loss"] for r in rows] == history["val_loss"]


@pytest.mark.parametrize("callback", [CSVLogger, JSONLLogger, PlotCurves])
def test_file_writers_need_a_place_to_write(callback):
    with pytest.raises(ValueError, match=f"{callback.__name__} needs a path or a Trainer run_dir"):
        fit(make_trainer([callback()]))


def test_csv_logger_path_and_late_columns(tmp_path):
    class LateValue(gl.Callback):
        def on_epoch_end(self, trainer, logs):
            if trainer.state.epoch == 1:
                logs["late"] = 1.5

    path = tmp_path / "logs" / "m.csv"
    fit(make_trainer([LateValue(), CSVLogger(path)], max_epochs=3))
    rows = read_metrics_csv(path)
    assert [("late" in r) for r in rows] == [False, True, False]
    assert rows[1]["late"] == 1.5


# ---------------------------------------------------------------------------------- jsonl
def test_jsonl_epoch_rows_and_step_rows(tmp_path):
    trainer = make_trainer([JSONLLogger(log_every_n_steps=2)], run_dir=tmp_path)
    history = fit(trainer)  # 96 samples / 16 = 6 steps per epoch, 18 in all
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["type"] == "epoch"]
    steps = [r for r in rows if r["type"] == "step"]
    assert [{k: v for k, v in r.items() if k not in ("type", "epoch")} for r in epochs] == history.epochs
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert [r["global_step"] for r in steps] == list(range(2, 19, 2))
    assert [r["epoch"] for r in steps] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(set(r) == {"type", "epoch", "global_step", "loss"} and math.isfinite(r["loss"]) for r in steps)
    assert rows.index(epochs[0]) == 3  # step rows of epoch 0, then its epoch row


def test_jsonl_one_step_row_per_optimizer_step_under_accumulation(tmp_path):
    trainer = make_trainer([JSONLLogger(log_every_n_steps=1)], run_dir=tmp_path, max_epochs=1, accumulate_grad_batches=2)
    fit(trainer)
    steps = [r["global_step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["type"] == "step"]
    assert steps == [1, 2, 3]


def test_jsonl_without_step_rows_has_no_batch_hook(tmp_path):
    logger = JSONLLogger(log_every_n_steps=None)
    assert not logger.listens("on_train_batch_end") and not logger.listens("on_optimizer_step")
    assert JSONLLogger().listens("on_train_batch_end") and JSONLLogger().listens("on_optimizer_step")
    fit(make_trainer([logger], run_dir=tmp_path, max_epochs=2))
    assert [r["type"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == ["epoch", "epoch"]
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="log_every_n_steps"):
            JSONLLogger(log_every_n_steps=bad)


def test_jsonl_writes_non_finite_values_as_null(tmp_path):
    class NaNValue(gl.Callback):
        def on_epoch_end(self, trainer, logs):
            logs["weird"] = math.nan

    fit(make_trainer([NaNValue(), JSONLLogger()], run_dir=tmp_path, max_epochs=1))
    line = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"weird": null' in line and "NaN" not in line


def test_resume_does_not_duplicate_rows(tmp_path):
    run = tmp_path / "run"
    first = make_trainer([CSVLogger(), JSONLLogger(log_every_n_steps=4)], run_dir=run, max_epochs=2)
    fit(first)
    ckpt = first.save_checkpoint(run / "after-2.ckpt")
    # the first run went on past its checkpoint (then died mid-line): rows a resume must drop
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"type": "step", "epoch": 2, "global_step": 16, "loss": 9.0}) + "\n")
        handle.write(json.dumps({"type": "epoch", "epoch": 2, "loss": 9.0}) + "\n")
        handle.write('{"type": "step", "epo')

    resumed = make_trainer([CSVLogger(), JSONLLogger(log_every_n_steps=4)], run_dir=run, max_epochs=4)
    history = fit(resumed, resume=ckpt)
    assert len(history.epochs) == 4
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows if r["type"] == "epoch"] == [0, 1, 2, 3]
    steps = [r["global_step"] for r in rows if r["type"] == "step"]
    assert steps == list(range(4, 25, 4))  # 6 steps per epoch, 24 in all, each once
    assert all(r["loss"] != 9.0 for r in rows)
    assert [r["epoch"] for r in read_metrics_csv(run / "metrics.csv")] == [0, 1, 2, 3]

    # a fit that does not resume starts both files afresh
    fit(make_trainer([CSVLogger(), JSONLLogger(log_every_n_steps=4)], run_dir=run, max_epochs=1))
    assert [r["type"] for r in read_jsonl(run / "metrics.jsonl")] == ["step", "epoch"]
    assert len(read_metrics_csv(run / "metrics.csv")) == 1


# ---------------------------------------------------------------------------------- tensorboard
def test_tensorboard_logger_without_tensorboard_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="TensorBoardLogger needs tensorboard: pip install tensorboard"):
        TensorBoardLogger()


def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    fit(make_trainer([TensorBoardLogger()], run_dir=tmp_path, max_epochs=2))
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


# ---------------------------------------------------------------------------------- curves
def _epochs(n=4, lr=lambda e: 1e-3, shift=0.0, grad_norm=False):
    rows = []
    for e in range(n):
        row = {
            "loss": 1.0 / (e + 1) + shift,
            "accuracy": 0.5 + 0.1 * e,
            "val_loss": 1.2 / (e + 1),
            "val_accuracy": 0.45 + 0.1 * e,
            "lr": lr(e),
            "time": 0.5,
        }
        if grad_norm:
            row["grad_norm"] = 2.0 - 0.1 * e
        rows.append(row)
    return rows


def _png_size(path):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    height, width = imread(path).shape[:2]
    return width, height


def test_curves_have_loss_metric_and_lr_panels(tmp_path):
    fig = curves_figure(_epochs())
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    assert [[line.get_label() for line in ax.get_lines()] for ax in fig.axes] == [["train", "val"], ["train", "val"], ["lr"]]
    assert fig.axes[2].get_yscale() == "linear"  # a constant LR
    path = plot_history(_epochs(), tmp_path / "curves.png")
    assert _png_size(path) == (1200, 300)  # three 400x300 panels in a row

    varying = curves_figure(_epochs(lr=lambda e: 1e-3 * 0.5**e, grad_norm=True))
    assert [ax.get_title() for ax in varying.axes] == ["loss", "accuracy", "grad_norm", "learning rate"]
    assert varying.axes[3].get_yscale() == "log"
    assert _png_size(plot_history(_epochs(grad_norm=True), tmp_path / "four.png")) == (1200, 600)


def test_curves_png_changes_when_metrics_change(tmp_path):
    a = plot_history(_epochs(), tmp_path / "a.png").read_bytes()
    again = plot_history(_epochs(), tmp_path / "b.png").read_bytes()
    changed = plot_history(_epochs(shift=0.3), tmp_path / "c.png").read_bytes()
    assert a == again and a != changed
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, nothing left behind


def test_plot_history_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="no epochs to plot"):
        plot_history([], tmp_path / "curves.png")


def test_plot_curves_callback_and_replot_from_csv(tmp_path):
    seen = []

    class Spy(gl.Callback):
        priority = 11

        def on_epoch_end(self, trainer, logs):
            png = trainer.run_dir / "curves.png"
            seen.append(png.read_bytes() if png.exists() else None)

    trainer = make_trainer([CSVLogger(), PlotCurves(every_n_seconds=0), Spy()], run_dir=tmp_path, max_epochs=3)
    history = fit(trainer)
    assert None not in seen and len(set(seen)) == 3  # redrawn at every epoch end
    final = (tmp_path / "curves.png").read_bytes()
    assert final == seen[-1]
    # `gradloop plot RUN_DIR` path: the rows of metrics.csv draw the very same image
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert plot_history(rows, tmp_path / "replot.png").read_bytes() == final
    assert _png_size(tmp_path / "curves.png") == (1200, 300)
    assert history["loss"]


def test_plot_curves_throttles_during_training_and_draws_at_the_end(tmp_path):
    seen = []

    class Spy(gl.Callback):
        priority = 11

        def on_epoch_end(self, trainer, logs):
            seen.append((trainer.run_dir / "curves.png").exists())

    plots = PlotCurves(every_n_seconds=3600)
    fit(make_trainer([plots, Spy()], run_dir=tmp_path, max_epochs=2))
    assert seen == [False, False]
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plots.render_seconds > 0
    with pytest.raises(ValueError, match="every_n_seconds"):
        PlotCurves(every_n_seconds=-1)
