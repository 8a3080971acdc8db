"""File formats -> numpy arrays: CSV with a header, NPZ with `X` and `y`, MNIST-style IDX.

Every problem is a `UsageError` naming the file: missing, unreadable, wrong columns, no rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..util import first_line
from .errors import UsageError

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class Table:
    """Samples read from one file: inputs, targets (None when the file has none) and feature names."""

    X: np.ndarray
    y: np.ndarray | None
    features: list[str] | None
    where: str


def kind_of(path: Path) -> str:
    """ "csv", "npz", "npy" or "idx" (a folder or an `*-ubyte[.gz]` file); a UsageError otherwise."""
    if not path.exists():
        raise UsageError(f"data file {str(path)!r} does not exist")
    name = path.name.lower()
    if path.is_dir():
        return "idx"
    for suffix, kind in ((".csv", "csv"), (".csv.gz", "csv"), (".npz", "npz"), (".npy", "npy"), ("ubyte", "idx"), ("ubyte.gz", "idx")):
        if name.endswith(suffix):
            return kind
    raise UsageError(f"unsupported data file {str(path)!r}: use a .csv, an .npz with X and y, or an MNIST-style IDX folder")


# ------------------------------------------------------------------------------------ CSV
def read_csv(path: Path, target: str | None, target_required: bool = True) -> Table:
    """Numeric feature columns plus the `target` column (kept as text: labels may be names)."""
    header = _csv_header(path)
    if target is not None and target not in header:
        if target_required:
            raise UsageError(f"{path}: no target column {target!r} (set data.target); columns: {', '.join(header)}")
        target = None
    features = [name for name in header if name != target]
    if not features:
        raise UsageError(f"{path}: no feature columns besides the target {target!r}")
    feature_cols = [i for i, name in enumerate(header) if name != target]
    try:  # fast path (C parser): well-formed numeric features
        X = _loadtxt(path, feature_cols, np.float64)
        y = _loadtxt(path, [header.index(target)], str).reshape(-1) if target is not None else None
    except ValueError:  # slow path, which can say exactly what is wrong and where
        rows = _csv_rows(path, header)
        X = np.empty((len(rows), len(features)), dtype=np.float64)
        for j, column in enumerate(feature_cols):
            X[:, j] = _numeric_column(rows[:, column], header[column], path)
        y = rows[:, header.index(target)] if target is not None else None
    if X.shape[0] == 0:
        raise UsageError(f"{path}: no samples (only a header): the data needs at least one row")
    return Table(X, np.char.strip(y) if y is not None else None, features, str(path))


def _loadtxt(path: Path, columns: list[int], dtype: type) -> np.ndarray:
    with _open_text(path) as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "input contained no data": reported as "no samples" below
        return np.loadtxt(handle, delimiter=",", skiprows=1, usecols=columns, dtype=dtype, ndmin=2, quotechar='"')


def _csv_header(path: Path) -> list[str]:
    try:
        with _open_text(path) as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UsageError(f"{path}: cannot be read as CSV: {first_line(err)}") from None
    if not header:
        raise UsageError(f"{path}: the file is empty: it needs a header row and at least one sample")
    return [name.strip() for name in header]


def _csv_rows(path: Path, header: list[str]) -> np.ndarray:
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle)
            next(reader, None)
            rows = [row for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UsageError(f"{path}: cannot be read as CSV: {first_line(err)}") from None
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise UsageError(f"{path}: line {number} has {len(row)} fields but the header has {len(header)}")
    return np.array(rows, dtype=str).reshape(len(rows), len(header))


def _numeric_column(values: np.ndarray, name: str, path: Path) -> np.ndarray:
    stripped = np.char.strip(values)
    cleaned = np.where(np.isin(np.char.lower(stripped), ["", "na", "nan", "null", "none"]), "nan", stripped)
    try:
        return cleaned.astype(np.float64)
    except ValueError:
        for row, value in enumerate(cleaned.tolist()):
            try:
                float(value)
            except ValueError:
                raise UsageError(
                    f"{path}: column {name!r} is not numeric (line {row + 2}: {value!r}): encode it as numbers or drop it"
                ) from None
        raise


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path), newline="")
    return open(path, newline="")


# ------------------------------------------------------------------------------------ NPZ / NPY
def read_npz(path: Path, target_required: bool = True) -> Table:
    """Arrays `X` and `y` from an .npz file (loaded without pickle)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys, X, y = archive.files, archive.get("X"), archive.get("y")
    except (OSError, ValueError, EOFError) as err:
        raise UsageError(f"{path}: cannot be read as .npz: {first_line(err)}") from None
    if X is None or (target_required and y is None):
        raise UsageError(f"{path}: an .npz needs arrays 'X' and 'y'; it has: {', '.join(keys) or 'none'}")
    return Table(X, y, None, str(path))


def read_npy(path: Path) -> Table:
    """One array of inputs (for predict)."""
    try:
        X = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UsageError(f"{path}: cannot be read as .npy: {first_line(err)}") from None
    return Table(X, None, None, str(path))


# ------------------------------------------------------------------------------------ IDX
def read_idx_folder(folder: Path, split: str, required: bool = True) -> Table | None:
    """Images and labels of one split ("train" or "t10k") of an IDX folder; None if absent and not `required`."""

    def find(kind: str) -> Path | None:
        return min((p for p in folder.iterdir() if p.name.startswith(f"{split}-{kind}") and "ubyte" in p.name), default=None)

    images, labels = find("images"), find("labels")
    if images is None or labels is None:
        if not required and images is None and labels is None:
            return None
        missing = f"{split}-images-idx3-ubyte[.gz]" if images is None else f"{split}-labels-idx1-ubyte[.gz]"
        raise UsageError(f"{folder}: IDX folder has no {missing}")
    X, y = read_idx(images), read_idx(labels)
    if len(X) != len(y):
        raise UsageError(f"{folder}: {images.name} holds {len(X)} images but {labels.name} holds {len(y)} labels")
    return Table(X, y, None, str(folder))


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (`.gz` or not) as a numpy array of its declared type and shape."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise UsageError(f"{path}: cannot be read: {first_line(err)}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UsageError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise UsageError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise UsageError(f"{path}: IDX data holds {len(data) - header} bytes but its header promises {expected} (shape {shape})")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
