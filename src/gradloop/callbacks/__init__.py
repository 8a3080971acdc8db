"""Callbacks: early stopping, LR schedules, checkpoints, NaN guard, logging, progress, plots."""
from .base import Callback
from .logging import CSVLogger
from .progress import ProgressBar

__all__ = ["Callback", "CSVLogger", "ProgressBar"]
