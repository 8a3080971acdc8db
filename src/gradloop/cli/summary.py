"""Text for people: the resolved settings, best epochs, final metrics, a run's metrics.csv."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ..callbacks.monitor import infer_mode
from ..names.metrics import RESERVED_NAMES
from ..util import read_metrics_csv

NOT_METRICS = tuple(name for name in RESERVED_NAMES if name != "loss")  # logged beside loss and metrics


def settings_lines(config: dict[str, Any]) -> list[str]:
    """One line per config section: `train   optimizer="adam" lr=0.001 ...` (TOML-style values)."""
    lines = []
    for section, values in config.items():
        if section == "callbacks":
            for name, options in values.items():
                lines.append(f"  callbacks.{name}  {_pairs(options)}".rstrip())
        else:
            lines.append(f"  {section:<6} {_pairs(values)}")
    return lines


def _pairs(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in values.items() if v is not None and v != {})


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def best_epoch(rows: Sequence[dict[str, float]], monitor: str) -> tuple[int, float] | None:
    """(epoch index, value) of the best finite `monitor` value, or None."""
    values = [(i, row[monitor]) for i, row in enumerate(rows) if isinstance(row.get(monitor), float) and math.isfinite(row[monitor])]
    if not values:
        return None
    pick = min if infer_mode(monitor, "auto", fallback="min") == "min" else max
    return pick(values, key=lambda iv: iv[1])


def default_monitor(rows: Sequence[dict[str, float]]) -> str:
    return "val_loss" if rows and "val_loss" in rows[-1] else "loss"


def fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def metrics_text(row: dict[str, Any], names: Sequence[str] | None = None) -> str:
    """`name value` pairs of the numbers in `row`: `names`, else every metric."""
    names = names or [k for k in row if k not in NOT_METRICS]
    return "  ".join(f"{k} {fmt(row[k])}" for k in names if isinstance(row.get(k), float))


def headline(row: dict[str, Any]) -> str:
    """An epoch's validation values (its metrics when there is no validation)."""
    return metrics_text(row, [k for k in row if k.startswith("val_")])


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv rows (util.read_metrics_csv); [] when there is none or it cannot be read."""
    try:
        return read_metrics_csv(path)
    except (OSError, ValueError):
        return []
