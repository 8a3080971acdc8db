"""The report's curves as inline SVG: one chart per quantity (loss, each metric, lr, ...), one line
per run and split (train solid, validation dashed).

Every chart says how to read it back: the `<svg>` carries its data domain (`data-x-min`,
`data-x-max`, `data-y-min`, `data-y-max`) and its plot area in SVG units (`data-plot-x`,
`data-plot-y`, `data-plot-width`, `data-plot-height`); every `<polyline>` carries `data-run`,
`data-split`, `data-column` and `data-epochs` (the epoch of each point, in order). A value that
is not finite (NaN, Inf) breaks the line: the series goes on in a new polyline; an epoch without
the value (validation that did not run) is left out and the line joins its neighbours.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from html import escape
from typing import Any, Sequence

WIDTH, HEIGHT = 560, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 40
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
DASH = {"train": "", "val": "6 4"}
MAX_MARKERS = 300  # points per series drawn as hoverable dots (with their values as tooltips)
NOT_CURVES = ("epoch", "time")


@dataclass
class Series:
    run: str
    split: str  # "train" or "val"
    column: str  # the metrics.csv column
    color: str
    points: list[tuple[int, float]]  # (epoch, value), every row that has the column


def quantities(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> list[tuple[str, list[Series]]]:
    """(quantity, its series) for every quantity in the runs' metrics: loss first, lr last."""
    columns: dict[str, None] = {}
    for _, rows in runs:
        for r in rows:
            columns.update(dict.fromkeys(k for k, v in r.items() if k not in NOT_CURVES and isinstance(v, float)))
    names = list(dict.fromkeys(c.removeprefix("val_") for c in columns))
    names.sort(key=lambda n: (n != "loss", n == "lr"))  # stable: metrics keep their order
    charts = []
    for name in names:
        series = []
        for index, (label, rows) in enumerate(runs):
            for split, column in (("train", name), ("val", "val_" + name)):
                points = [(int(r["epoch"]), r[column]) for r in rows if isinstance(r.get(column), float)]
                if points:
                    series.append(Series(label, split, column, PALETTE[index % len(PALETTE)], points))
        charts.append((name, series))
    return charts


def svg_chart(quantity: str, series: Sequence[Series]) -> str:
    finite = [(e, v) for s in series for e, v in s.points if math.isfinite(v)]
    epochs = [e for e, _ in finite] or [0]
    x_lo, x_hi = min(epochs), max(epochs)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi, y_ticks = _domain([v for _, v in finite] or [0.0])
    x_ticks = [t for t in _ticks(x_lo, x_hi, whole=True) if x_lo <= t <= x_hi]

    def px(epoch: float) -> float:
        return LEFT + (epoch - x_lo) / (x_hi - x_lo) * PLOT_W

    def py(value: float) -> float:
        return TOP + PLOT_H - (value - y_lo) / (y_hi - y_lo) * PLOT_H

    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(quantity)} per epoch" data-quantity="{escape(quantity)}" '
        f'data-x-min="{x_lo}" data-x-max="{x_hi}" data-y-min="{y_lo!r}" data-y-max="{y_hi!r}" '
        f'data-plot-x="{LEFT}" data-plot-y="{TOP}" data-plot-width="{PLOT_W}" data-plot-height="{PLOT_H}">',
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>',
    ]
    for t in y_ticks:
        y = py(t)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.2f}" y2="{y:.2f}"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.2f}" text-anchor="end">{_tick_text(t)}</text>')
    for t in x_ticks:
        x = px(t)
        parts.append(f'<line class="grid" x1="{x:.2f}" x2="{x:.2f}" y1="{TOP}" y2="{TOP + PLOT_H}"/>')
        parts.append(f'<text class="tick" x="{x:.2f}" y="{TOP + PLOT_H + 16}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text class="axis" x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 6}" text-anchor="middle">epoch</text>')
    parts.append(
        f'<text class="axis" transform="translate(14 {TOP + PLOT_H / 2}) rotate(-90)" text-anchor="middle">{escape(quantity)}</text>'
    )
    for s in series:
        dash = f' stroke-dasharray="{DASH[s.split]}"' if DASH[s.split] else ""
        common = f'data-run="{escape(s.run)}" data-split="{s.split}" data-column="{escape(s.column)}"'
        for segment in _segments(s.points):
            coords = " ".join(f"{px(e):.2f},{py(v):.2f}" for e, v in segment)
            listed = " ".join(str(e) for e, _ in segment)
            parts.append(
                f'<polyline class="series" {common} data-epochs="{listed}" points="{coords}" stroke="{s.color}"{dash}>'
                f"<title>{escape(s.run)}: {escape(s.column)}</title></polyline>"
            )
            if len(s.points) <= MAX_MARKERS:
                parts += [
                    f'<circle class="point" cx="{px(e):.2f}" cy="{py(v):.2f}" r="2.5" fill="{s.color}">'
                    f"<title>{escape(s.run)} {escape(s.column)}, epoch {e}: {v:.6g}</title></circle>"
                    for e, v in segment
                ]
    parts.append("</svg>")
    return "".join(parts)


def legend(series: Sequence[Series]) -> str:
    items = []
    for s in series:
        dash = f' stroke-dasharray="{DASH[s.split]}"' if DASH[s.split] else ""
        line = f'<line x1="1" y1="5" x2="29" y2="5" stroke="{s.color}" stroke-width="2.5"{dash}/>'
        sample = f'<svg width="30" height="10" aria-hidden="true">{line}</svg>'
        items.append(f'<li>{sample} {escape(s.run)} <span class="split">{escape(s.column)}</span></li>')
    return f'<ul class="legend">{"".join(items)}</ul>'


def not_drawn(series: Sequence[Series]) -> list[str]:
    """One note per series with values that could not be drawn (NaN, Inf)."""
    notes = []
    for s in series:
        bad = [e for e, v in s.points if not math.isfinite(v)]
        if bad:
            notes.append(f"{s.run} {s.column}: not finite at epoch {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}")
    return notes


def _segments(points: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """The runs of finite points: a NaN or Inf breaks the line."""
    return [list(run) for finite, run in itertools.groupby(points, key=lambda point: math.isfinite(point[1])) if finite]


def _domain(values: list[float]) -> tuple[float, float, list[float]]:
    """A y range that starts and ends on round ticks and holds every value, and those ticks."""
    lo, hi = min(values), max(values)
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _step(lo, hi)
    lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
    return lo, hi, _ticks(lo, hi)


def _step(lo: float, hi: float, count: int = 5, whole: bool = False) -> float:
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * 0.999)
    return max(1.0, round(step)) if whole else step


def _ticks(lo: float, hi: float, whole: bool = False) -> list[float]:
    step = _step(lo, hi, whole=whole)
    first = math.ceil(lo / step - 1e-9)
    return [round((first + i) * step, 12) for i in range(int((hi - first * step) / step + 1e-9) + 1)]


def _tick_text(value: float) -> str:
    return f"{value:.4g}" if value else "0"
