"""Where samples come from: scikit-learn's bundled datasets, or the user's CSV / NPZ / IDX files.

`load_raw` returns the samples as read (labels not yet encoded, features not yet scaled);
`prepare.py` turns them into training arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DataConfig
from .errors import UsageError
from .readers import Table, kind_of, read_csv, read_idx, read_idx_folder, read_npy, read_npz

REGRESSION_DATASETS = ("diabetes",)  # float targets; the others are classification


@dataclass
class RawData:
    """The samples of a run as read: `train` (split later unless `val` is given), `val`, `test`."""

    name: str
    train: Table
    val: Table | None = None
    test: Table | None = None
    class_names: list[str] | None = None  # label names in index order, when the source knows them
    notes: list[str] = field(default_factory=list)


def load_raw(cfg: DataConfig) -> RawData:
    """Reads the dataset named by `cfg` (bundled `name` or `path`, plus `val_path`/`test_path`)."""
    if cfg.name is not None:
        return load_bundled(cfg.name)
    assert cfg.path is not None
    path = Path(cfg.path)
    kind = kind_of(path)
    raw = RawData(name=path.name, train=read_table(path, cfg.target, kind, "train"))
    if kind == "idx":
        raw.test = read_idx_folder(path, "t10k", required=False) if path.is_dir() else None
    if cfg.val_path is not None:
        raw.val = read_table(Path(cfg.val_path), cfg.target)
    if cfg.test_path is not None:
        raw.test = read_table(Path(cfg.test_path), cfg.target)
    return raw


def read_table(path: Path, target: str | None, kind: str | None = None, split: str = "train", target_required: bool = True) -> Table:
    """One labelled (or, for predict, unlabelled) file of any supported kind."""
    kind = kind or kind_of(path)
    if kind == "csv":
        return read_csv(path, target, target_required)
    if kind == "npz":
        return read_npz(path, target_required)
    if kind == "npy":
        if target_required:
            raise UsageError(f"{path}: an .npy holds inputs only; labelled data needs an .npz with X and y (or a CSV)")
        return read_npy(path)
    if path.is_dir():  # an IDX folder: the `split` files ("t10k" for eval/predict), else the training files
        table = read_idx_folder(path, split, required=False) if split != "train" else None
        return table or read_idx_folder(path, "train")  # type: ignore[return-value]
    if target_required:
        raise UsageError(f"{path}: a single IDX file has no labels: pass the IDX folder instead")
    return Table(read_idx(path), None, None, str(path))


def load_bundled(name: str) -> RawData:
    """One of scikit-learn's bundled datasets (no download). Digits come as 8x8 images."""
    import sklearn.datasets as sk

    bunch = getattr(sk, f"load_{name}")()  # config.BUNDLED: each has a sklearn.datasets.load_<name>
    X = bunch.images if name == "digits" else bunch.data
    features = None if name == "digits" else [str(f) for f in bunch.feature_names]
    if name in REGRESSION_DATASETS:
        return RawData(name, Table(np.asarray(X, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64), features, name))
    names = [str(c) for c in bunch.target_names]
    labels = np.array(names)[bunch.target]  # by name, so that predict answers "malignant", not 0
    return RawData(name, Table(np.asarray(X, dtype=np.float64), labels, features, name), class_names=names)
