"""`gradloop doctor CONFIG.toml`: the doctor's checks on the config's data and model.

Exit codes: 0 no check failed, 1 a check failed (bad data included), 2 the config cannot be used.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

from ...doctor import doctor as run_doctor
from ...util import first_line
from ..config import validate
from ..errors import UsageError
from ..models import resolve_step
from ..session import build, resolve_paths
from ..tomlfile import apply_overrides, read_toml


def doctor(config_path: str, overrides: Sequence[str] = ()) -> int:
    path = Path(config_path)
    config = validate(apply_overrides(read_toml(path), overrides), str(path))
    config = resolve_paths(config, path.parent.resolve())
    resolve_step(config.train.step, [path.parent.resolve()])  # a bad train.step is the config's fault: exit 2, not a failed check
    # lenient: data and model faults are the doctor's to report, not ours to reject
    try:
        session = build(config, search_paths=[path.parent.resolve()], with_callbacks=False, default_callbacks=False, strict=False)
    except UsageError as err:  # the config was read and its files exist: what fails now is the data itself
        print(f"gradloop doctor: {path}: FAILED - the data cannot be used")
        print(f"FAIL  data.load  {err}")
        return 1
    train, data = session.config.train, session.data
    options = {
        "loss": train.loss,  # with a step: what its outputs and targets are, if train.loss says (else None)
        "step": session.step,
        "val": data.val,
        "optimizer": train.optimizer,
        "lr": train.lr,
        "batch_size": config.data.batch_size,
        "device": train.device,
    }
    accepted = inspect.signature(run_doctor).parameters
    print(f"gradloop doctor: {path} ({session.spec.describe()})", flush=True)
    try:
        report = run_doctor(session.model, data.train, **{k: v for k, v in options.items() if k in accepted})
    except (ValueError, TypeError) as err:
        raise UsageError(first_line(err)) from None
    print(report)
    return 0 if report.ok else 1
