"""What the report shows of one run directory, read from its own files and nothing else.

metrics.csv (the curves, best and final values), config.toml (a CLI run's settings) or the newest
checkpoint's saved settings and optimizer hyperparameters (a Python-API run), run.json (status),
doctor.json (the doctor's findings, when `DoctorReport.save(run_dir)` wrote one) and every
checkpoint, verified.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...persistence.checkpoint import CheckpointError
from ...persistence.verification import CheckpointInfo, run_files, verify_file
from ...util import first_line, flatten, read_metrics_csv
from ..commands.runs import COLUMNS, row
from ..errors import UsageError
from ..rundir import CONFIG_FILE
from ..tomlfile import read_toml

METRICS_FILE = "metrics.csv"
DOCTOR_FILE = "doctor.json"


@dataclass
class FileCheck:
    """One file of the run (a checkpoint or model.safetensors) and what verifying it said."""

    name: str
    size: int
    ok: bool
    detail: str  # what it holds when ok, what is wrong otherwise


@dataclass
class RunData:
    label: str  # unique among the report's runs
    path: Path
    rows: list[dict[str, Any]]  # util.read_metrics_csv(metrics.csv)
    overview: dict[str, str]  # `gradloop runs`'s columns
    settings: dict[str, str] = field(default_factory=dict)  # "section.key" -> value as text
    settings_source: str = ""
    files: list[FileCheck] = field(default_factory=list)
    doctor: dict[str, Any] | None = None
    doctor_error: str | None = None


def check_run_dir(given: str) -> tuple[Path, list[dict[str, Any]]]:
    """The run directory and its metrics rows; a UsageError (one line) when it cannot be reported."""
    path = Path(given)
    if not path.is_dir():
        raise UsageError(f"run directory {given!r} does not exist" if not path.exists() else f"{given!r} is a file, not a run directory")
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise UsageError(f"{given!r} has no {METRICS_FILE}: it is not a run directory (or the run has not started an epoch)")
    try:
        rows = read_metrics_csv(metrics)
    except (OSError, ValueError) as err:
        raise UsageError(f"{metrics}: {first_line(err)}") from None
    if not rows:
        raise UsageError(f"{metrics} has no epochs yet: report the run once it has finished one")
    return path, rows


def collect(path: Path, rows: list[dict[str, Any]], label: str) -> RunData:
    run = RunData(label, path, rows, dict(zip(COLUMNS, row(path))))
    first_checkpoint: CheckpointInfo | None = None
    for file in run_files(path):
        try:
            info = verify_file(file)
        except (CheckpointError, OSError) as err:
            run.files.append(FileCheck(file.name, _size(file), False, first_line(err)))
            continue
        run.files.append(FileCheck(file.name, info.size, True, info.describe()))
        if first_checkpoint is None and isinstance(info, CheckpointInfo):
            first_checkpoint = info  # newest first: the one a resume would take
    if (path / CONFIG_FILE).is_file():
        try:
            run.settings = {key: value_text(v) for key, v in flatten(read_toml(path / CONFIG_FILE)).items()}
            run.settings_source = CONFIG_FILE
        except UsageError as err:
            run.settings_source = f"{CONFIG_FILE} cannot be read: {err}"
    elif first_checkpoint is not None:
        flat = {f"fit.{k}": v for k, v in first_checkpoint.settings.items()}
        flat.update({f"optimizer.{k}": v for k, v in first_checkpoint.hyperparameters.items()})
        run.settings = {key: value_text(value) for key, value in flat.items()}
        run.settings_source = f"checkpoints/{first_checkpoint.path.name}"
    _read_doctor(run)
    return run


def unique_labels(paths: list[Path]) -> list[str]:
    """Each run's directory name; a repeated name gets -2, -3, ..."""
    labels: list[str] = []
    for path in paths:
        label, n = path.resolve().name or str(path), 2
        while label in labels:
            label, n = f"{path.resolve().name}-{n}", n + 1
        labels.append(label)
    return labels


def value_text(value: Any) -> str:
    """A setting as TOML / JSON writes it: "adam", 0.001, true, [128, 64]."""
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return str(value)


def _read_doctor(run: RunData) -> None:
    path = run.path / DOCTOR_FILE
    if not path.is_file():
        return
    try:
        report = json.loads(path.read_text())
        if not isinstance(report, dict) or not isinstance(report.get("checks"), list):
            raise ValueError("it has no list of checks")
        run.doctor = report
    except (OSError, ValueError) as err:
        run.doctor_error = f"{DOCTOR_FILE} cannot be read: {first_line(err)}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
