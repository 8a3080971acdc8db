"""Raw samples -> training arrays: task inference, label encoding, seeded split, standardization.

Everything learned from the training data (class names, feature means and scales) lives in a
`DataSpec`, saved as RUN_DIR/data.json, so that `eval`, `predict` and `resume` transform new
inputs exactly as the run did.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DataConfig
from .datasets import RawData
from .errors import UsageError
from .labels import as_float, class_names, first_value, infer_task, is_int, label_text
from .readers import Table

Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class DataSpec:
    """How a run reads data: task, label names, input shape and the standardization it fitted."""

    dataset: str
    task: str  # "classification" or "regression"
    input_shape: list[int]
    num_outputs: int
    classes: list[str] | None = None  # label names in class-index order
    features: list[str] | None = None  # CSV feature columns, in order
    target: str | None = None  # CSV target column
    scale: str = "none"  # "feature" (per column), "global" (one mean/std, for images) or "none"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    target_mean: list[float] | None = None  # regression targets, for the model's output scale
    target_std: list[float] | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    # ---------------------------------------------------------------------------- persistence
    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "DataSpec":
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise UsageError(f"{path} is missing: the run directory is incomplete") from None
        except (ValueError, TypeError) as err:
            raise UsageError(f"{path} is unreadable ({err}): the run directory is damaged") from None

    # ---------------------------------------------------------------------------- transforms
    def inputs(self, table: Table, check_finite: bool = True) -> np.ndarray:
        """The table's inputs, columns matched and shaped for the model, standardized, float32."""
        X = _columns_for(self, table)
        if X.shape[0] == 0:
            raise UsageError(f"{table.where}: no samples: the data needs at least one")
        X = _numbers(X, table.where)
        shape = tuple(self.input_shape)
        if tuple(X.shape[1:]) != shape:
            if int(np.prod(X.shape[1:])) != int(np.prod(shape)):
                raise UsageError(
                    f"{table.where}: samples have shape {tuple(X.shape[1:])} but the model takes {shape} "
                    f"({int(np.prod(shape))} values per sample)"
                )
            X = X.reshape((X.shape[0], *shape))
        X = X.astype(np.float64)
        if check_finite:
            _check_finite(X, table)
        if self.scale != "none":
            mean, std = np.asarray(self.mean), np.asarray(self.std)
            if self.scale == "feature":
                mean, std = mean.reshape(shape), std.reshape(shape)
            X = (X - mean) / std
        return X.astype(np.float32)

    def labels(self, y: np.ndarray | None, where: str) -> np.ndarray:
        """Class indices (int64) for classification, float32 (N, k) targets for regression."""
        if y is None:
            raise UsageError(f"{where}: no targets: evaluation needs labelled data")
        if self.task == "regression":
            values = as_float(y)
            if values is None:
                raise UsageError(f"{where}: regression targets must be numbers; found labels like {first_value(y)!r}")
            values = values.reshape(len(values), -1)
            if not np.isfinite(values).all():
                row = int(np.argwhere(~np.isfinite(values))[0, 0])
                raise UsageError(f"{where}: targets contain NaN or Inf (first at row {row}): remove those samples")
            return values.astype(np.float32)
        assert self.classes is not None
        text = label_text(y, where)
        index = {name: i for i, name in enumerate(self.classes)}
        if not any(is_int(c) for c in self.classes) and all(is_int(t) and 0 <= int(t) < len(self.classes) for t in set(text.tolist())):
            index = {str(i): i for i in range(len(self.classes))}  # class indices for named classes
        unknown = [t for t in dict.fromkeys(text.tolist()) if t not in index]
        if unknown:
            raise UsageError(
                f"{where}: labels {', '.join(repr(u) for u in unknown[:5])} are not among the run's classes "
                f"({', '.join(self.classes[:20])}): the model has {len(self.classes)} outputs"
            )
        return np.array([index[t] for t in text.tolist()], dtype=np.int64)

    def describe(self) -> str:
        what = f"{len(self.classes)} classes" if self.classes else f"{self.num_outputs} target(s)"
        sizes = ", ".join(f"{n} {k}" for k, n in self.sizes.items() if n)
        return f"{self.dataset}: {self.task}, {what}, input shape {tuple(self.input_shape)}; {sizes}"


@dataclass
class Prepared:
    """Arrays ready for `Trainer.fit`, and the spec that made them."""

    spec: DataSpec
    train: Pair
    val: Pair | None
    test: Pair | None


def prepare(raw: RawData, cfg: DataConfig, seed: int, spec: DataSpec | None = None, check_finite: bool = True) -> Prepared:
    """Encodes labels, splits off validation (stratified, seeded), fits and applies standardization.

    With a saved `spec` (resume, eval) its classes and statistics are used instead of refitted.
    `check_finite=False` lets NaN/Inf inputs through (for the doctor, which reports them).
    """
    tables = [t for t in (raw.train, raw.val, raw.test) if t is not None]
    for table in tables:
        if table.y is not None and len(table.y) != len(table.X):
            raise UsageError(f"{table.where}: X has {len(table.X)} samples but y has {len(table.y)}")
    if len(raw.train.X) == 0:
        raise UsageError(f"{raw.train.where}: no samples: the data needs at least one")
    fresh = spec is None
    if spec is None:
        task = infer_task(raw.train.y, cfg.task, raw.train.where)
        classes = None
        if task == "classification":
            classes = raw.class_names or class_names([label_text(t.y, t.where) for t in tables if t.y is not None])
        x0 = np.asarray(raw.train.X)
        shape = [1] if x0.ndim == 1 else list(x0.shape[1:])
        spec = DataSpec(
            raw.name, task, shape, len(classes) if classes else 1, classes, raw.train.features, cfg.target if raw.train.features else None
        )
    y_all = spec.labels(raw.train.y, raw.train.where)
    train_idx, val_idx = np.arange(len(y_all)), None
    if raw.val is None and cfg.val_split > 0:
        labels = y_all if spec.task == "classification" else None
        train_idx, val_idx = split_indices(labels, len(y_all), cfg.val_split, seed, raw.train.where)
    if fresh:
        if spec.task == "regression":
            spec.num_outputs = y_all.shape[1]
            spec.target_mean = y_all[train_idx].mean(axis=0).tolist()
            spec.target_std = _safe_std(y_all[train_idx].std(axis=0)).tolist()
        if cfg.standardize:
            fit_standardization(spec, raw.train, train_idx, check_finite)
    X_all = spec.inputs(raw.train, check_finite)
    train = (X_all[train_idx], y_all[train_idx])
    val = (X_all[val_idx], y_all[val_idx]) if val_idx is not None else _pair(spec, raw.val, check_finite)
    test = _pair(spec, raw.test, check_finite)
    spec.sizes = {"train": len(train[1]), "val": len(val[1]) if val else 0, "test": len(test[1]) if test else 0}
    return Prepared(spec, train, val, test)


def _pair(spec: DataSpec, table: Table | None, check_finite: bool = True) -> Pair | None:
    return None if table is None else (spec.inputs(table, check_finite), spec.labels(table.y, table.where))


# ------------------------------------------------------------------------------------- split & scale
def split_indices(labels: np.ndarray | None, n: int, fraction: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of `n` rows; stratified by class when `labels` are given.

    Each class keeps at least one training sample; the validation share of each class is rounded.
    """
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if labels is not None else [np.arange(n)]
    val = []
    for members in groups:
        members = rng.permutation(members)
        k = min(int(round(len(members) * fraction)), len(members) - 1)
        val.append(members[:k])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64)
    if len(val_idx) == 0:
        raise UsageError(f"{where}: data.val_split = {fraction} leaves no validation samples out of {n}: raise it, or set it to 0")
    return np.setdiff1d(np.arange(n), val_idx), val_idx


def fit_standardization(spec: DataSpec, table: Table, rows: np.ndarray, check_finite: bool = True) -> None:
    """Per-feature mean/std for tabular data; one mean/std for images (ndim >= 3 per sample)."""
    X = _numbers(np.asarray(table.X), table.where).astype(np.float64)
    if check_finite:
        _check_finite(X, table)
    X = X[rows]
    if not check_finite:
        X = np.where(np.isfinite(X), X, np.nan)  # statistics of the finite values only
    with np.errstate(all="ignore"):
        if X.ndim >= 3:
            spec.scale, spec.mean, spec.std = "global", [float(np.nan_to_num(np.nanmean(X)))], [float(_safe_std(np.nanstd(X)))]
        else:
            spec.scale = "feature"
            spec.mean = np.nan_to_num(np.nanmean(X, axis=0)).reshape(-1).tolist()
            spec.std = _safe_std(np.nanstd(X, axis=0)).reshape(-1).tolist()


def _safe_std(std: Any) -> np.ndarray:
    std = np.asarray(std, dtype=np.float64)
    return np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)  # a constant feature stays 0 after centering


def _numbers(X: np.ndarray, where: str) -> np.ndarray:
    """X with one row per sample (a 1-D X is one feature), or a UsageError when it is not numeric."""
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.dtype.kind not in "biuf":
        raise UsageError(f"{where}: inputs have dtype {X.dtype}, not numbers: gradloop reads numeric features only")
    return X


def _check_finite(X: np.ndarray, table: Table) -> None:
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad.reshape(len(X), -1))[0]
        where = f"line {row + 2}" if table.features else f"sample {row}"  # features: a CSV with a header line
        what = f"column {table.features[col]!r}" if table.features and X.ndim == 2 else f"value {col}"
        raise UsageError(f"{table.where}: inputs contain NaN or Inf (first at {where}, {what}): remove or impute those values")


def _columns_for(spec: DataSpec, table: Table) -> np.ndarray:
    """A CSV's columns in the order the run used (by name; by position when the names differ)."""
    X = np.asarray(table.X)
    if not (spec.features and table.features) or table.features == spec.features:
        return X
    missing = [f for f in spec.features if f not in table.features]
    if not missing:
        return X[:, [table.features.index(f) for f in spec.features]]
    if len(table.features) == len(spec.features):
        print(f"gradloop: note: {table.where} has other column names than the run's features; using them by position", file=sys.stderr)
        return X
    raise UsageError(f"{table.where}: missing feature columns {', '.join(missing[:10])} (the run used {len(spec.features)} features)")
