"""A run directory reopened: its config, data spec and trained model (for resume, eval, predict)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..util import first_line
from .config import Config, load_config
from .errors import UsageError
from .prepare import DataSpec
from .rundir import CONFIG_FILE, DATA_FILE, read_run
from .session import resolve_defaults


@dataclass
class SavedRun:
    """What RUN_DIR holds about its run; `search_paths` is where a factory model is imported from."""

    path: Path
    config: Config
    spec: DataSpec
    search_paths: list[Path]


def open_run(run_dir: str | Path) -> SavedRun:
    """Reads RUN_DIR/config.toml and data.json; a UsageError when the directory is not a run."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} does not exist")
    if not (path / CONFIG_FILE).is_file():
        raise UsageError(f"{str(run_dir)!r} has no {CONFIG_FILE}: it is not a run directory written by `gradloop fit`")
    config = load_config(path / CONFIG_FILE)
    spec = DataSpec.load(path / DATA_FILE)
    config_dir = read_run(path).get("config_dir")
    return SavedRun(path, resolve_defaults(config, spec), spec, [Path(config_dir)] if config_dir else [])


def weights_file(run: SavedRun) -> Path:
    """model.safetensors, else the newest checkpoint (a run interrupted before its end)."""
    from ..persistence.finding import latest

    final = run.path / "model.safetensors"
    if final.is_file():
        return final
    checkpoint = latest(run.path / "checkpoints")
    if checkpoint is None:
        raise UsageError(f"{run.path} holds no trained weights (no model.safetensors, no checkpoints): the run never finished an epoch")
    return checkpoint


def inference_trainer(run: SavedRun) -> tuple[Any, Path]:
    """A Trainer (writing nothing) around the run's model with its trained weights loaded; a run
    trained with a `train.step` evaluates with that step (its loss and logged values)."""
    import torch

    from .. import Trainer
    from ..persistence.checkpoint import CheckpointError, load
    from ..persistence.weights import load_weights
    from .models import build_model, resolve_step

    if run.config.train.threads is not None:
        torch.set_num_threads(run.config.train.threads)
    step = resolve_step(run.config.train.step, run.search_paths)
    model = build_model(run.config.model, run.spec, run.search_paths)
    source = weights_file(run)
    try:
        if source.suffix == ".safetensors":
            load_weights(model, source)
        else:
            model.load_state_dict(load(source)["model"])
    except (CheckpointError, RuntimeError) as err:
        raise UsageError(f"{source}: weights do not load into the run's model: {first_line(err)}") from None
    try:
        trainer = Trainer(model, **run.config.train.trainer_options(), default_callbacks=False, step=step)
    except (ValueError, TypeError) as err:
        raise UsageError(first_line(err)) from None
    return trainer, source
