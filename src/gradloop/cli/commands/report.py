"""`gradloop report RUN_DIR... [--out report.html]`: one self-contained HTML page comparing runs.

Every RUN_DIR is checked first (a directory with a metrics.csv of at least one epoch); only then
is the page built and written, atomically: a bad input is one line, exit 2, and nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ...util import atomic_write
from ..errors import UsageError


def report(run_dirs: Sequence[str], out: str = "report.html") -> int:
    from ..report.collect import check_run_dir, collect, unique_labels
    from ..report.page import render

    target = Path(out)
    if target.is_dir():
        raise UsageError(f"--out {out!r} is a directory: give the HTML file to write, e.g. --out {Path(out) / 'report.html'}")
    checked = [check_run_dir(given) for given in run_dirs]
    labels = unique_labels([path for path, _ in checked])
    runs = [collect(path, rows, label) for (path, rows), label in zip(checked, labels)]
    try:
        atomic_write(target, render(runs), durable=False)
    except OSError as err:
        raise UsageError(f"cannot write {out!r}: {err.strerror or err}") from None
    epochs = ", ".join(f"{r.label} {len(r.rows)}" for r in runs)
    print(f"wrote {target} ({len(runs)} run{'s' if len(runs) != 1 else ''}; epochs: {epochs})")
    return 0
