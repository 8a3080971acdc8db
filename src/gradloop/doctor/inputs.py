"""Reading `data` / `val` (the kinds `Trainer.fit` takes) into tensors the checks can inspect.

In-memory `(X, y)` pairs are used whole. A `Dataset` or `DataLoader` is read once, batch by
batch, up to `max_samples` samples. When a loader's inputs are not tensors (dicts, ragged
sequences), a few of its batches are kept as given: the model checks still run on them, the
per-feature data checks do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.batches import Batch, as_tensor
from ..util import first_line, length_or_none

RAW_BATCHES = 16  # batches kept when the inputs cannot be stacked into one tensor


class DataError(Exception):
    """The data cannot be read at all; the message says why and what to pass instead."""


@dataclass
class Arrays:
    """One data split as read by the doctor: tensors on the CPU, or raw batches."""

    role: str
    X: torch.Tensor | None = None
    y: torch.Tensor | None = None
    raw_batches: list[Batch] = field(default_factory=list)
    note: str = ""  # e.g. "first 100000 of 250000 samples"
    form: str = "pair"  # how a loader's batches looked: "pair" (x, y), "single" [x], "bare" x (what a step gets)

    @property
    def has_targets(self) -> bool:
        if self.X is not None:
            return self.y is not None
        return bool(self.raw_batches) and all(y is not None for _, y in self.raw_batches)


def read(data: Any, role: str, max_samples: int) -> Arrays:
    """Reads one split; raises DataError with a one-line reason when it cannot."""
    if isinstance(data, DataLoader):
        return _read_loader(data, role, max_samples)
    if isinstance(data, Dataset):
        return _read_loader(DataLoader(data, batch_size=256, shuffle=False), role, max_samples)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        raise DataError(f"{role} data has inputs but no targets: pass a pair (X, y)")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        of_length = f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""
        raise DataError(
            f"{role} data must be a pair (X, y) of tensors or arrays, a Dataset or a DataLoader; received {type(data).__name__}{of_length}"
        )
    try:
        X, y = as_tensor(data[0], f"{role} X"), as_tensor(data[1], f"{role} y")
    except TypeError as err:
        raise DataError(str(err)) from None
    if X.ndim == 0 or y.ndim == 0:
        raise DataError(f"{role} X and y need one row per sample; they have shapes {tuple(X.shape)} and {tuple(y.shape)}")
    if X.shape[0] == 0:
        raise DataError(f"{role} data is empty (X has shape {tuple(X.shape)}): it needs at least one sample")
    return Arrays(role, X.detach().cpu(), y.detach().cpu())


def _read_loader(loader: DataLoader, role: str, max_samples: int) -> Arrays:
    xs: list[Any] = []
    ys: list[Any] = []
    count = 0
    form = "pair"
    try:
        for item in loader:
            x, y, batch_form = _split(item)
            if not xs:
                form = batch_form
            xs.append(x)
            ys.append(y)
            count += length(x)
            if count >= max_samples or (not isinstance(x, torch.Tensor) and len(xs) >= RAW_BATCHES):
                break
    except Exception as err:  # a Dataset that fails on some sample: the doctor reports it
        raise DataError(f"reading the {role} data failed at batch {len(xs)}: {type(err).__name__}: {first_line(err)}") from None
    if count == 0:
        raise DataError(f"{role} data is empty: it needs at least one sample")
    total = length_or_none(loader.dataset)
    note = f"first {count} of {total} samples" if total is not None and count < total else ""
    stackable = all(isinstance(x, torch.Tensor) for x in xs) and (
        all(isinstance(y, torch.Tensor) for y in ys) or all(y is None for y in ys)
    )
    if stackable:
        try:
            X = torch.cat([torch.atleast_1d(x.detach().cpu()) for x in xs])
            y = torch.cat([torch.atleast_1d(y.detach().cpu()) for y in ys]) if ys[0] is not None else None
            return Arrays(role, X, y, note=note, form=form)
        except RuntimeError:  # batches of different shapes (e.g. padded per batch): keep them raw
            pass
    return Arrays(role, raw_batches=list(zip(xs, ys))[:RAW_BATCHES], note=note or f"first {min(len(xs), RAW_BATCHES)} batches", form=form)


def _split(item: Any) -> tuple[Any, Any, str]:
    """A loader's batch as (inputs, targets or None, its form: "pair", "single" or "bare")."""
    if isinstance(item, (list, tuple)) and not hasattr(item, "_fields"):
        if len(item) >= 2:
            return item[0], item[1], "pair"
        if len(item) == 1:
            return item[0], None, "single"
    return item, None, "bare"


def length(x: Any) -> int:
    """Samples in a batch of inputs: a tensor's first dimension, a dict's first value's, or len()."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.ndim else 1
    if isinstance(x, dict) and x:
        return length(next(iter(x.values())))
    try:
        return len(x)
    except TypeError:
        return 1
