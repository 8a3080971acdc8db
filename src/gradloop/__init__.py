"""gradloop: the PyTorch training loop, done once and done properly."""
from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LRScheduler,
    ProgressBar,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from .checkpoint import CheckpointError, load_weights
from .history import History
from .state import TrainState
from .trainer import Trainer

__all__ = [
    "Trainer", "History", "TrainState", "Callback", "CSVLogger", "EarlyStopping", "LRScheduler", "ProgressBar",
    "ReduceLROnPlateau", "TerminateOnNaN", "CheckpointError", "load_weights",
]
__version__ = "0.1.0"
