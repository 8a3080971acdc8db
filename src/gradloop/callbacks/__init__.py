"""Callbacks: early stopping, LR schedules, checkpoints, NaN guard, logging, progress, plots."""
from .base import Callback
from .early_stopping import EarlyStopping
from .logging import CSVLogger
from .lr import LRScheduler, ReduceLROnPlateau
from .nan import TerminateOnNaN
from .progress import ProgressBar

__all__ = ["Callback", "CSVLogger", "EarlyStopping", "LRScheduler", "ProgressBar", "ReduceLROnPlateau", "TerminateOnNaN"]
