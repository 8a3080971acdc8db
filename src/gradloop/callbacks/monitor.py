"""The monitored value shared by early stopping, LR-on-plateau and checkpointing."""

from __future__ import annotations

import math
import re
import sys
from typing import Sequence

_MAX_WORDS = ("accuracy", "acc", "auc", "r2", "precision", "recall", "f1", "iou", "dice")
_MIN_WORDS = ("loss", "error", "mae", "mse", "rmse", "mape", "perplexity")


class DefaultMonitor(str):
    """The default monitor name: `"val_loss"`, which falls back to `"loss"` without validation data."""


VAL_LOSS = DefaultMonitor("val_loss")


def check_monitor(monitor: object, mode: object) -> None:
    """The constructor checks of every callback that watches a logged value."""
    if not isinstance(monitor, str):
        raise TypeError(f"monitor must be the name of a logged value, e.g. 'val_loss'; received: monitor={monitor!r}")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max'; received: mode={mode!r}")


def infer_mode(monitor: str, mode: str, fallback: str | None = None) -> str:
    """ "min" or "max" for `monitor`; `mode="auto"` infers it from the name (as Keras does).

    A name that says neither gives `fallback`, or a ValueError when there is none."""
    if mode in ("min", "max"):
        return mode
    words = set(re.split(r"[^a-z0-9]+", monitor.lower().removeprefix("val_").removeprefix("test_")))
    if words & {"loss", "error"}:
        return "min"
    if words & set(_MAX_WORDS) or any(w.endswith("accuracy") for w in words):
        return "max"
    if words & set(_MIN_WORDS):
        return "min"
    if fallback is not None:
        return fallback
    raise ValueError(f"cannot tell whether monitor={monitor!r} should be minimized or maximized: pass mode='min' or mode='max'")


def resolve_monitor(available: Sequence[str], monitor: str, owner: str) -> str:
    """Checks that `monitor` is among the `available` logged names (`Trainer.logged_names`).

    The default `val_loss` (`VAL_LOSS`) falls back to `loss` with a note when there is no
    validation data; a monitor named explicitly never falls back.
    """
    if monitor in available:
        return monitor
    if isinstance(monitor, DefaultMonitor) and "val_" + "loss" not in available and "loss" in available:
        print(f"gradloop: {owner} monitors 'loss' (no validation data was given for the default 'val_loss')", file=sys.stderr)
        return "loss"
    raise ValueError(f"{owner} monitors {str(monitor)!r}, which is not logged; available: {', '.join(available)}")


def monitored_value(logs: dict[str, float], monitor: str, owner: str) -> float:
    """The epoch's value of `monitor`; a ValueError that lists the logged names when it is missing."""
    if monitor not in logs:
        raise ValueError(f"{owner} monitors {monitor!r}, which is not in this epoch's logs: {', '.join(logs)}")
    return float(logs[monitor])


def is_improvement(current: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    """Keras's rule: better than `best` by more than `min_delta`; NaN never improves."""
    if math.isnan(current):
        return False
    delta = abs(min_delta)
    return current < best - delta if mode == "min" else current > best + delta


def worst(mode: str) -> float:
    """The starting best: nothing is worse. Before `mode="auto"` is resolved, that of "min"."""
    return -math.inf if mode == "max" else math.inf
