"""`gradloop plot RUN_DIR`: (re)draws RUN_DIR/curves.png from RUN_DIR/metrics.csv."""

from __future__ import annotations

from pathlib import Path

from ...util import first_line, read_metrics_csv
from ..errors import UsageError


def plot(run_dir: str) -> int:
    from ...callbacks.plots import plot_history

    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"run directory {run_dir!r} does not exist")
    metrics = path / "metrics.csv"
    if not metrics.is_file():
        raise UsageError(f"{run_dir!r} has no metrics.csv: nothing to plot (the run has not finished an epoch)")
    try:
        rows = read_metrics_csv(metrics)
        out = plot_history(rows, path / "curves.png")
    except (ValueError, OSError) as err:
        raise UsageError(f"{metrics}: {first_line(err)}") from None
    print(f"wrote {out} ({len(rows)} epoch{'s' if len(rows) != 1 else ''})")
    return 0
