"""gradloop: the PyTorch training loop, done once and done properly."""
from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    JSONLLogger,
    LRScheduler,
    ModelCheckpoint,
    PlotCurves,
    ProgressBar,
    ReduceLROnPlateau,
    TensorBoardLogger,
    TerminateOnNaN,
)
from .persistence.checkpoint import CheckpointError
from .persistence.weights import load_weights
from .doctor import lr_find, DoctorReport, LRFindResult, doctor
from .history import History
from .persistence.runlock import RunDirLocked
from .state import TrainState
from .util import seed_everything
from .trainer import Trainer

__all__ = [
    "doctor", "DoctorReport", "lr_find", "LRFindResult",
    "Trainer", "History", "TrainState", "Callback", "CSVLogger", "EarlyStopping", "LRScheduler", "ProgressBar",
    "ReduceLROnPlateau", "TerminateOnNaN", "seed_everything", "JSONLLogger", "ModelCheckpoint", "PlotCurves", "TensorBoardLogger", "CheckpointError", "RunDirLocked", "load_weights",
]
__version__ = "0.1.0"
