"""`gradloop doctor CONFIG.toml [--resume]`: the doctor's checks, or the resume check, on the config's data and model.

Exit codes: 0 no check failed (with --resume: the resumed run is bit-identical), 1 a check failed
(bad data included), 2 the config cannot be used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ...doctor import doctor as run_doctor
from ...util import first_line
from ..config import Config, load_config
from ..errors import UsageError
from ..models import resolve_step
from ..session import build, load_data, resolve_paths

RESUME_EPOCHS = 3  # --resume without --steps: the config's run, cut to this many epochs


def doctor(config_path: str, overrides: Sequence[str] = ()) -> int:
    path, config, search = _read(config_path, overrides)
    # lenient: data and model faults are the doctor's to report, not ours to reject
    try:
        session = build(config, search_paths=search, with_callbacks=False, default_callbacks=False, strict=False)
    except UsageError as err:  # the config was read and its files exist: what fails now is the data itself
        print(f"gradloop doctor: {path}: FAILED - the data cannot be used")
        print(f"FAIL  data.load  {err}")
        return 1
    train, data = session.config.train, session.data
    print(f"gradloop doctor: {path} ({session.data.spec.describe()})", flush=True)
    try:
        report = run_doctor(
            session.model,
            data.train,
            loss=train.loss,  # with a step: what its outputs and targets are, if train.loss says (else None)
            step=session.step,
            val=data.val,
            optimizer=train.optimizer,
            lr=train.lr,
            batch_size=config.data.batch_size,
            device=train.device,
        )
    except (ValueError, TypeError) as err:
        raise UsageError(first_line(err)) from None
    print(report)
    return 0 if report.ok else 1


def doctor_resume(config_path: str, overrides: Sequence[str] = (), steps: int | None = None) -> int:
    """`gl.check_resume` on the config's model, data and callbacks: prints the result, 0 when bit-identical."""
    from ...resume_check import check_resume

    path, config, search = _read(config_path, overrides)
    try:
        data = load_data(config)
        build(config, search_paths=search, data=data, default_callbacks=False)  # every check of `fit`, once
    except UsageError as err:
        print(f"gradloop doctor --resume: {path}: FAILED - the data cannot be used")
        print(f"FAIL  data.load  {err}")
        return 1
    per_epoch = math.ceil(math.ceil(len(data.train[1]) / config.data.batch_size) / config.train.accumulate_grad_batches)
    if steps is None:
        epochs = min(config.train.max_epochs, RESUME_EPOCHS)
        steps = max(2, min(epochs * per_epoch, config.train.max_steps or epochs * per_epoch))

    def factory() -> Any:  # a fresh, seeded model and Trainer each call, as `gradloop fit` builds them
        return build(config, search_paths=search, data=data, default_callbacks=False).trainer

    print(f"gradloop doctor --resume: {path} ({data.spec.describe()}): {steps} optimizer steps ({per_epoch} per epoch)", flush=True)
    result = check_resume(factory, data.train, val=data.val, steps=steps, batch_size=config.data.batch_size)
    print(result)
    return 0 if result.ok else 1


def _read(config_path: str, overrides: Sequence[str]) -> tuple[Path, Config, list[Path]]:
    """The config, its paths resolved, and where its modules are imported from (its folder)."""
    path = Path(config_path)
    search = [path.parent.resolve()]
    config = resolve_paths(load_config(path, overrides), search[0])
    resolve_step(config.train.step, search)  # a bad train.step is the config's fault: exit 2, not a failed check
    return path, config, search
