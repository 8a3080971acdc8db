"""`gradloop fit`, `gradloop demo` and `gradloop resume`.

Order of work: read and validate the config, load the data, build the model and Trainer (all
checks), and only then create the run directory and train. A failure before the first epoch
removes the run directory again; so does a failure that left no checkpoint behind.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ...data import distributed
from ...util import first_line
from ..config import Config, load_config, validate
from ..demo import demo_config
from ..errors import UsageError
from ..rundir import CONFIG_FILE, DATA_FILE, RunDir, RunRecorder, check_new_run_dir, default_run_dir, status_for
from ..saved import open_run
from ..session import Session, build, describe_device, resolve_paths
from ..summary import best_epoch, default_monitor, fmt, headline, metrics_text, read_metrics, settings_lines
from ..tomlfile import apply_overrides


def fit(config_path: str, overrides: Sequence[str] = (), run_dir: str | None = None) -> int:
    """Trains the run described by CONFIG.toml (plus `--set` overrides) into a new run directory."""
    path = Path(config_path)
    base = path.parent.resolve()
    return start(resolve_paths(load_config(path, overrides), base), path.stem, run_dir, search_paths=[base])


def demo(overrides: Sequence[str] = (), run_dir: str | None = None) -> int:
    """The embedded default run: a small CNN on the bundled digits."""
    config = validate(apply_overrides(demo_config(), overrides), "demo config")
    print("gradloop demo: a small CNN learns scikit-learn's 8x8 handwritten digits (bundled, no download)")
    return start(config, "demo", run_dir)


def start(config: Config, stem: str, run_dir: str | None, search_paths: Sequence[Path] = ()) -> int:
    """Under torchrun every rank trains into the one `--run-dir`; rank 0 alone checks it, writes the
    settings and prints."""
    if distributed.is_distributed() and not run_dir:
        raise UsageError("under torchrun every rank writes to one run directory: name it with --run-dir DIR")
    target = Path(run_dir) if run_dir else default_run_dir(stem)
    if distributed.is_rank_zero():
        check_new_run_dir(target)
    recorder = _recorder(target, search_paths)
    session = build(config, run_dir=target, search_paths=search_paths, extra_callbacks=[recorder])
    run = RunDir(target)
    run.create()
    if distributed.is_rank_zero():
        try:
            (target / CONFIG_FILE).write_text(session.config.to_toml())
            session.data.spec.save(target / DATA_FILE)
        except OSError as err:
            run.discard()
            raise UsageError(f"run directory {str(target)!r} cannot be written: {err.strerror}") from None
        _print_header(session, target)
    return train(session, run, recorder, resume=None)


def resume(run_dir: str, max_epochs: int | None = None) -> int:
    """Continues a run from its newest checkpoint, with the settings in RUN_DIR/config.toml."""
    saved = open_run(run_dir)
    path, config = saved.path, saved.config
    if max_epochs is not None:
        config = config.model_copy(update={"train": config.train.model_copy(update={"max_epochs": max_epochs})})
    recorder = _recorder(path, saved.search_paths)
    session = build(config, run_dir=path, spec=saved.spec, search_paths=saved.search_paths, extra_callbacks=[recorder])
    if distributed.is_rank_zero():
        if max_epochs is not None:
            (path / CONFIG_FILE).write_text(session.config.to_toml())
        _print_header(session, path)
    return train(session, RunDir(path), recorder, resume="last")


def train(session: Session, run: RunDir, recorder: RunRecorder, resume: str | None) -> int:
    """Runs `Trainer.fit`, records the outcome in run.json and prints the summary. A fresh run
    (`resume=None`) that fails before its first checkpoint leaves no run directory behind."""
    trainer, data = session.trainer, session.data
    trainer.resume_command = f"gradloop resume {shlex.quote(str(run.path))}"  # printed after SIGTERM/SIGINT
    epochs_before = len(read_metrics(run.path / "metrics.csv")) if resume else 0
    started = time.perf_counter()
    try:
        history = trainer.fit(data.train, val=data.val, batch_size=session.config.data.batch_size, resume=resume)
    except SystemExit as stop:  # SIGTERM / SIGINT: the Trainer wrote a checkpoint, said how to resume, exits 143 / 130
        recorder.finish("interrupted", stop_reason=trainer.stop_reason or f"signal (exit {stop.code})")
        raise
    except KeyboardInterrupt:
        recorder.finish("interrupted", stop_reason="KeyboardInterrupt")
        print(f"\ngradloop: interrupted; continue with: gradloop resume {run.path}", file=sys.stderr)
        return 130
    except Exception as err:
        message = first_line(err)
        if not recorder.started:  # rejected before the first step: bad input, nothing to keep
            if resume is None:
                run.discard()
            raise UsageError(message) from None
        error = f"{type(err).__name__}: {message}"
        recorder.finish("failed", error=error)
        if resume is None and not run.has_checkpoint():
            run.discard()
            what_now = f"no checkpoint was written, so {run.path} was removed"
        else:
            what_now = f"resume from the last checkpoint with: gradloop resume {run.path}"
        print(f"gradloop: error: training failed ({error}); {what_now}", file=sys.stderr)
        return 1
    recorder.finish(status_for(trainer.stop_reason), stop_reason=trainer.stop_reason)
    if not distributed.is_rank_zero():
        return 0
    if resume and epochs_before and len(history.epochs) <= epochs_before:
        print(
            f"nothing to train: the run already has its {len(history.epochs)} epochs "
            f"(train longer with: gradloop resume {run.path} --max-epochs N)"
        )
    _print_summary(session, history.epochs, run.path, time.perf_counter() - started)
    return 0


def _print_header(session: Session, run_dir: Path) -> None:
    print(f"settings (saved in {run_dir / CONFIG_FILE}):")
    print("\n".join(settings_lines(session.config.resolved())))
    print(f"data:    {session.data.spec.describe()}")
    print(f"device:  {describe_device(session.trainer)}")
    print(f"model:   {session.config.model.name}, {sum(p.numel() for p in session.model.parameters()):,} parameters")
    print(f"run dir: {run_dir}", flush=True)


def _print_summary(session: Session, rows: list[dict[str, Any]], run_dir: Path, seconds: float) -> None:
    total = session.config.train.max_epochs
    reason = session.trainer.stop_reason or "max_epochs"
    reason = f"reached {reason}" if reason in ("max_epochs", "max_steps") else reason
    print(f"done: {len(rows)} epoch{'s' if len(rows) != 1 else ''} in {seconds:.1f}s ({reason})")
    if rows:
        es = session.config.callbacks.early_stopping
        monitor = es.monitor if es is not None and es.monitor else default_monitor(rows)
        best = best_epoch(rows, monitor)
        if best is not None:
            epoch, value = best
            print(f"best epoch: {epoch + 1}/{total}  {monitor} {fmt(value)}  ({headline(rows[epoch])})")
            if es is not None and es.restore_best_weights:
                print(f"weights: those of epoch {epoch + 1} (restore_best_weights), in {run_dir / 'model.safetensors'}")
        if "val_accuracy" in rows[-1]:
            acc = best_epoch(rows, "val_accuracy")
            if acc is not None:
                print(f"best val accuracy: {acc[1]:.2%} (epoch {acc[0] + 1}/{total})")
        print(f"final:   {metrics_text(rows[-1])}")
    print(f"run dir: {run_dir}")
    print(f"  resume:  gradloop resume {run_dir}")
    print(f"  eval:    gradloop eval {run_dir}")
    print(f"  predict: gradloop predict {run_dir} INPUT.csv --out predictions.csv")


def _recorder(run_dir: Path, search_paths: Sequence[Path]) -> RunRecorder:
    command = shlex.join(["gradloop", *sys.argv[1:]])
    return RunRecorder(run_dir, command, config_dir=str(search_paths[0]) if search_paths else None)
