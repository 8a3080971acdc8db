"""Config -> everything a command needs: data arrays, model, callbacks and a `gl.Trainer`.

All checks happen here, before any command writes a file: paths exist, the data parses, the
model builds and accepts the data, the monitored names will be logged. Failures are
`UsageError`s naming the config key or file.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..util import did_you_mean, first_line
from .config import Config
from .datasets import load_raw
from .errors import UsageError
from .prepare import DataSpec, Prepared, prepare

# config table -> (module under gradloop.callbacks, class name)
CALLBACKS = {
    "early_stopping": ("early_stopping", "EarlyStopping"),
    "reduce_lr_on_plateau": ("lr", "ReduceLROnPlateau"),
    "model_checkpoint": ("checkpoint", "ModelCheckpoint"),
    "terminate_on_nan": ("nan", "TerminateOnNaN"),
    "mlflow": ("mlflow", "MLflowLogger"),
}


@dataclass
class Session:
    """A validated, ready-to-train run (nothing written yet)."""

    config: Config  # resolved: absolute paths, loss/metrics/monitors filled in
    data: Prepared
    model: Any  # nn.Module
    trainer: Any  # gl.Trainer
    step: Any = None  # the resolved train.step function, or None


def resolve_paths(config: Config, base: Path | None) -> Config:
    """Makes data paths absolute: relative ones are looked up beside the config file, then in the CWD."""
    data = config.data
    updates = {}
    for key in ("path", "val_path", "test_path"):
        value = getattr(data, key)
        if value is None:
            continue
        path = Path(value).expanduser()
        candidates = [path] if path.is_absolute() else [*([base / path] if base else []), Path.cwd() / path]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            where = " or ".join(str(p.parent) for p in dict.fromkeys(candidates))
            raise UsageError(f"data.{key}: file {value!r} does not exist (looked in {where})")
        updates[key] = str(found.resolve())
    return config.model_copy(update={"data": data.model_copy(update=updates)})


def resolve_defaults(config: Config, spec: DataSpec) -> Config:
    """Fills in what the data decides: loss and metrics for the task. An unset monitor stays unset:
    the callback's default (`val_loss`, `loss` without validation data) is resolved by the callback.

    With a `train.step` the step computes the loss: no loss is chosen, and no metrics unless given
    (they would need the step's "outputs" and "targets")."""
    train = config.train
    classify = spec.task == "classification"
    updates: dict[str, Any] = {}
    if train.loss is None and train.step is None:
        updates["loss"] = "cross_entropy" if classify else "mse"
    if train.metrics is None:
        updates["metrics"] = [] if train.step is not None else ["accuracy"] if classify else ["mae", "r2"]
    return config.model_copy(update={"train": train.model_copy(update=updates)})


def check_monitors(config: Config, trainer: Any, has_val: bool) -> None:
    """Each monitor named in a `[callbacks.*]` table is one the Trainer will log (and has a mode)."""
    from ..callbacks.monitor import infer_mode, resolve_monitor

    available = trainer.logged_names(has_val)
    for key, (_, name) in CALLBACKS.items():
        section = getattr(config.callbacks, key)
        monitor = getattr(section, "monitor", None)
        if monitor is None:
            continue
        try:
            infer_mode(resolve_monitor(available, monitor, name), section.mode)
        except ValueError as err:
            hint = "" if monitor in available else did_you_mean(monitor, available)
            if not has_val and monitor.startswith("val_"):
                hint += " (there is no validation data: data.val_split is 0)"
            raise UsageError(f"[callbacks.{key}]: {first_line(err)}{hint}") from None


def build_callbacks(config: Config) -> list[Any]:
    """gl callbacks for the `[callbacks.*]` tables present (imported only when used)."""
    callbacks = []
    for key, (module, name) in CALLBACKS.items():
        section = getattr(config.callbacks, key)
        if section is None:
            continue
        cls = getattr(importlib.import_module(f"gradloop.callbacks.{module}"), name)
        options = section.model_dump(exclude_none=True)  # an unset key is one the callback defaults (monitor: val_loss)
        if key == "mlflow":
            options["params"] = config.resolved()  # the whole config as params: train.lr, data.batch_size, ...
        try:
            callbacks.append(cls(**options))
        except (TypeError, ValueError, ImportError) as err:
            raise UsageError(f"[callbacks.{key}]: {first_line(err)}") from None
    return callbacks


def load_data(config: Config, spec: DataSpec | None = None, check_finite: bool = True) -> Prepared:
    """Reads and prepares the config's data (with a saved `spec`: the run's classes and scaling)."""
    return prepare(load_raw(config.data), config.data, config.train.seed, spec, check_finite)


def build(
    config: Config,
    run_dir: Path | None = None,
    spec: DataSpec | None = None,
    search_paths: Sequence[Path] = (),
    data: Prepared | None = None,
    with_callbacks: bool = True,
    default_callbacks: bool = True,
    extra_callbacks: Sequence[Any] = (),
    strict: bool = True,
) -> Session:
    """Loads the data, resolves defaults, builds (seeded) the model and the Trainer, and checks
    that model and data fit together. Writes nothing.

    `strict=False` (for the doctor) lets non-finite inputs through and skips the model/data check.
    """
    import torch

    from .. import Trainer
    from .models import build_model, resolve_step

    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    step = resolve_step(config.train.step, search_paths)  # before the data: a bad spec is the config's fault
    data = data or load_data(config, spec, check_finite=strict)
    config = resolve_defaults(config, data.spec)
    torch.manual_seed(config.train.seed)  # the model's initial weights follow the seed too
    model = build_model(config.model, data.spec, search_paths)
    try:
        trainer = Trainer(
            model,
            **config.train.trainer_options(),
            callbacks=[*(build_callbacks(config) if with_callbacks else []), *extra_callbacks],
            run_dir=run_dir,
            default_callbacks=default_callbacks,
            step=step,
        )
    except (ValueError, TypeError) as err:
        raise UsageError(f"[train]: {first_line(err)}") from None
    check_monitors(config, trainer, data.val is not None)
    for role, pair in (("train", data.train), ("val", data.val), ("test", data.test)):
        if pair is None or not strict:
            continue
        try:  # the model meets the data: output shape, label range, loss and metrics
            trainer.check_data(pair, role, config.data.batch_size)
        except (ValueError, TypeError) as err:
            with_step = f" with train.step {config.train.step!r}" if config.train.step is not None else ""
            raise UsageError(
                f"model {config.model.name!r}{with_step} does not fit the data ({data.spec.dataset}): {first_line(err)}"
            ) from None
    return Session(config, data, model, trainer, step)


def describe_device(trainer: Any) -> str:
    import torch

    device = trainer.device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''}, {os.cpu_count()} cores)"
    return str(device)
