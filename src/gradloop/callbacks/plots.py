"""curves.png: loss, each metric (train vs val) and the learning rate, one panel each, per epoch.

matplotlib is imported inside the functions (it takes a while to import), and only its
object-oriented API is used (`Figure` with the Agg canvas), so no pyplot state and no GUI backend.
"""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..util import atomic_write, is_number
from .base import Callback
from .logging import run_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..trainer import Trainer

_NOT_PLOTTED = {"epoch", "time", "type", "global_step"}
PANEL_SIZE = (4.0, 3.0)  # inches per panel
MARGINS = (0.65, 0.15, 0.5, 0.35)  # inches around each panel's axes: left, right, bottom, top
DPI = 100
MAX_COLUMNS = 3


def _is_lr(name: str) -> bool:
    return name == "lr" or name.startswith(("lr_", "lr/", "lr-"))


def _panels(epochs: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Panel title -> the names drawn in it: loss first, then metrics, then "lr" last."""
    names: dict[str, None] = {}
    for row in epochs:
        names.update(dict.fromkeys(n for n, v in row.items() if n not in _NOT_PLOTTED and _number(v) is not None))
    panels: dict[str, list[str]] = {"loss": []}
    for name in names:
        if not _is_lr(name):
            base = name.split("_", 1)[1] if name.startswith(("val_", "test_")) else name
            panels.setdefault(base, []).append(name)
    lrs = [n for n in names if _is_lr(n)]
    if lrs:
        panels["lr"] = lrs
    return {title: drawn for title, drawn in panels.items() if drawn}  # no "loss" panel without a loss


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def curves_figure(history_epochs: Sequence[dict[str, Any]]) -> "Figure":
    """The figure `plot_history` saves: one panel (Axes) per quantity, train and val overlaid.

    Panels: `loss`, then one per metric, then the learning rate (log scale when it varies).
    The x axis is the epoch, from the rows' `epoch` key when present (as in metrics.csv).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, MaxNLocator

    if not history_epochs:
        raise ValueError("there are no epochs to plot: train for at least one epoch first")
    panels = _panels(history_epochs)
    if not panels:
        raise ValueError(f"the history has no numeric values to plot; its keys are: {', '.join(history_epochs[0])}")
    x = [int(_number(r.get("epoch")) or 0) if "epoch" in r else i for i, r in enumerate(history_epochs)]
    ncols = min(MAX_COLUMNS, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows), dpi=DPI)
    _fixed_margins(fig, ncols, nrows)
    marker = "o" if len(history_epochs) <= 30 else None
    for i, (title, names) in enumerate(panels.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        positive, varies = True, False
        for name in names:
            ys = [_number(r.get(name)) for r in history_epochs]
            values = [math.nan if y is None else y for y in ys]
            ax.plot(x, values, marker=marker, markersize=3, label=_label(name, title))
            finite = [v for v in values if math.isfinite(v)]
            positive = positive and all(v > 0 for v in finite)
            varies = varies or (len(set(finite)) > 1)
        if title == "lr" and positive and varies:
            ax.set_yscale("log")
            # plain labels ("0.0006", "1e-05"): the default 6x10^-4 minor labels overflow the margin
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        if title == "lr" and not varies and finite:  # a constant LR: one labelled line, not offset ticks
            ax.set_yticks([finite[0]], labels=[f"{finite[0]:g}"])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(set(x)) == 1:
            ax.set_xlim(x[0] - 0.5, x[0] + 0.5)
        ax.set(title="learning rate" if title == "lr" else title, xlabel="epoch")
        ax.grid(True, alpha=0.3)
        if len(names) > 1:
            ax.legend()
    return fig


def _fixed_margins(fig: "Figure", ncols: int, nrows: int) -> None:
    """Fixed margins in inches: constrained layout took ~40% of a render (0.33 s -> 0.2 s CPU without it)."""
    left, right, bottom, top = MARGINS
    width, height = PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows
    axes_w, axes_h = PANEL_SIZE[0] - left - right, PANEL_SIZE[1] - bottom - top
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=(left + right) / axes_w,
        hspace=(bottom + top) / axes_h,
    )


def _label(name: str, title: str) -> str:
    """ "val", "test" or "train" in a metric's panel; the LR panel's lines keep their names."""
    if name.startswith(("val_", "test_")):
        return name.split("_", 1)[0]
    return name if title == "lr" else "train"


def plot_history(history_epochs: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Draws the curves of `history_epochs` (`trainer.history.epochs`, or rows from
    `util.read_metrics_csv`) into a PNG at `path`, written atomically. Returns the path."""
    path = Path(path)
    buffer = io.BytesIO()
    curves_figure(history_epochs).savefig(buffer, format="png")
    atomic_write(path, buffer.getvalue(), durable=False)
    return path


class PlotCurves(Callback):
    """Writes `curves.png` in the run directory (or `path`) while training and when it ends.

    Rendering takes around 0.1-0.3 s, a lot next to a short epoch, so during training the plot is
    redrawn at an epoch end only when `every_n_seconds` have passed since the last drawing (0:
    every epoch); it is always drawn when the fit ends. `gradloop plot RUN_DIR` redraws it from
    metrics.csv at any time.
    """

    priority = 10
    rank_zero_only = True  # under torchrun: rank 0 alone writes and prints

    def __init__(self, path: str | os.PathLike[str] | None = None, every_n_seconds: float = 30.0) -> None:
        if not is_number(every_n_seconds) or not every_n_seconds >= 0:
            raise ValueError(f"every_n_seconds must be a number >= 0; received: every_n_seconds={every_n_seconds!r}")
        self.path = Path(path) if path is not None else None
        self.every_n_seconds = float(every_n_seconds)
        self._file: Path | None = None
        self._last_drawn = -math.inf
        self._drawn_epochs = -1
        self.render_seconds = 0.0  # total time spent drawing in this fit

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._file = run_file(trainer, self.path, "curves.png", "PlotCurves")
        self._last_drawn = time.perf_counter() if self.every_n_seconds else -math.inf
        self._drawn_epochs = -1
        self.render_seconds = 0.0

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if time.perf_counter() - self._last_drawn >= self.every_n_seconds:
            self._draw(trainer)

    def on_fit_end(self, trainer: "Trainer") -> None:
        if trainer.history.epochs and len(trainer.history.epochs) != self._drawn_epochs:
            self._draw(trainer)

    def _draw(self, trainer: "Trainer") -> None:
        if self._file is None:
            raise ValueError("PlotCurves.on_fit_start was not called: add it to Trainer(callbacks=[...])")
        started = time.perf_counter()
        plot_history(trainer.history.epochs, self._file)
        self._drawn_epochs = len(trainer.history.epochs)
        self._last_drawn = time.perf_counter()
        self.render_seconds += self._last_drawn - started
