"""`gradloop runs [DIR]`: one line per run: dataset, model, epochs, best and final metrics, status."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..rundir import CONFIG_FILE, effective_status, read_run
from ..summary import best_epoch, default_monitor, fmt, headline, read_metrics
from ..tomlfile import read_toml

COLUMNS = ("run", "dataset", "model", "epochs", "best", "final", "status")


def runs(directory: str | None = None) -> int:
    """Prints the table; DIR defaults to ./runs (which may not exist yet: no runs)."""
    root = Path(directory or "runs")
    if not root.is_dir():
        if directory is None:
            print("no runs yet (./runs does not exist): start one with `gradloop demo` or `gradloop fit CONFIG.toml`", file=sys.stderr)
            return 0
        raise UsageError(f"runs directory {directory!r} does not exist")
    run_dirs = [root] if _is_run(root) else sorted(p for p in root.iterdir() if p.is_dir() and _is_run(p))
    if not run_dirs:
        print(f"no runs in {root}", file=sys.stderr)
        return 0
    table = [COLUMNS, *(row(p) for p in run_dirs)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS) - 1)]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _is_run(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or (path / "metrics.csv").is_file()


def row(run_dir: Path) -> tuple[str, ...]:
    """The table row of one run directory (missing pieces show as '-')."""
    config = _config(run_dir)
    data, model, train = config.get("data", {}), config.get("model", {}), config.get("train", {})
    dataset = data.get("name") or Path(str(data.get("path", "-"))).name
    rows = read_metrics(run_dir / "metrics.csv")
    max_epochs = train.get("max_epochs")
    epochs = f"{len(rows)}/{max_epochs}" if max_epochs else str(len(rows))
    monitor = config.get("callbacks", {}).get("early_stopping", {}).get("monitor") or default_monitor(rows)
    best = best_epoch(rows, monitor)
    best_text = f"{monitor} {fmt(best[1])} @{best[0] + 1}" if best else "-"
    final = rows[-1] if rows else {}
    if (run_dir / "run.json").exists():
        status = effective_status(read_run(run_dir))
    else:  # a run of the Python API: the Trainer writes model.safetensors when fit ends
        status = "finished" if (run_dir / "model.safetensors").exists() else "-"
    return (run_dir.name, str(dataset), str(model.get("name", "-")), epochs, best_text, headline(final) or "-", status)


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        return read_toml(run_dir / CONFIG_FILE)
    except UsageError:
        return {}
