"""Targets: is the task classification or regression, and what are the labels called?

Labels are compared as canonical text, so `3`, `"3"` and `3.0` are one class, and a run trained
on a CSV with text labels answers with the same text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UsageError


def infer_task(y: np.ndarray | None, requested: str, where: str) -> str:
    """ "classification" for integer or text labels, "regression" for float targets (or as requested)."""
    if y is None:
        raise UsageError(f"{where}: no targets")
    y = np.asarray(y)
    numeric = as_float(y)
    if requested == "regression":
        if numeric is None:
            raise UsageError(f"{where}: data.task = 'regression' but the targets are text labels like {first_value(y)!r}")
        return "regression"
    if requested == "classification":
        return "classification"  # label_text refuses anything but one label per sample
    if y.ndim > 1:
        if numeric is None:
            raise UsageError(f"{where}: y has shape {y.shape}: give one label per sample, or numeric targets for regression")
        return "regression"
    if y.dtype.kind in "biu":
        return "classification"
    if y.dtype.kind == "f":
        return "regression"
    if numeric is not None and not all_ints(y):
        return "regression"  # text that reads as decimal numbers: a CSV with a numeric target
    return "classification"


def label_text(y: np.ndarray, where: str) -> np.ndarray:
    """Canonical label names: `3` and `"3"` and `3.0` all become `"3"`; text is stripped."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise UsageError(f"{where}: classification needs one label per sample; y has shape {y.shape}")
    if y.dtype.kind in "biu":
        return y.astype(np.int64).astype(str)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise UsageError(f"{where}: labels contain NaN: remove those samples")
        return np.array([str(int(v)) if float(v).is_integer() else repr(float(v)) for v in y])
    if y.dtype.kind not in "US":
        raise UsageError(f"{where}: labels have dtype {y.dtype}; use integers or text")
    text = np.char.strip(y.astype(str))
    if (text == "").any():
        raise UsageError(f"{where}: a label is empty (first at row {int(np.argmax(text == ''))}): remove or fill those samples")
    if all_ints(text):
        return text.astype(np.int64).astype(str)
    return text


def class_names(label_sets: list[np.ndarray]) -> list[str]:
    """Sorted distinct labels: numerically when every label is an integer, else alphabetically."""
    names = sorted(set().union(*(set(s.tolist()) for s in label_sets)))
    if all(is_int(n) for n in names):
        names.sort(key=int)
    return names


def as_float(y: np.ndarray) -> np.ndarray | None:
    """The targets as float64, or None when some are not numbers."""
    if y.dtype.kind in "biuf":
        return y.astype(np.float64)
    if y.dtype.kind in "US":
        try:
            return np.char.strip(y.astype(str)).astype(np.float64)
        except ValueError:
            return None
    return None


def all_ints(text: np.ndarray) -> bool:
    """Every distinct label reads as an integer."""
    return all(is_int(t) for t in np.unique(text).tolist())


def is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def first_value(y: np.ndarray) -> Any:
    """The first target as a plain Python value (for messages)."""
    return np.asarray(y).reshape(-1)[:1].tolist()[0]
