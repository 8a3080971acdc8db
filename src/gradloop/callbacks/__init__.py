"""Callbacks: early stopping, LR schedules, weight averaging, checkpoints, NaN guard, logging (files, TensorBoard, MLflow),
progress, plots."""

from .averaging import EMA, SWA
from .base import Callback
from .checkpoint import ModelCheckpoint
from .early_stopping import EarlyStopping
from .logging import CSVLogger, JSONLLogger, TensorBoardLogger
from .lr import LRScheduler, ReduceLROnPlateau
from .mlflow import MLflowLogger
from .nan import TerminateOnNaN
from .plots import PlotCurves
from .progress import ProgressBar

__all__ = [
    "Callback",
    "CSVLogger",
    "EarlyStopping",
    "EMA",
    "JSONLLogger",
    "LRScheduler",
    "MLflowLogger",
    "ModelCheckpoint",
    "PlotCurves",
    "ProgressBar",
    "ReduceLROnPlateau",
    "SWA",
    "TensorBoardLogger",
    "TerminateOnNaN",
]
