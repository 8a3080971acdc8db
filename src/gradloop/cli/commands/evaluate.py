"""`gradloop eval` and `gradloop predict`: a run's final model on its own or new data."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ...util import first_line
from ..config import load_config
from ..datasets import read_table
from ..errors import UsageError
from ..prepare import Pair
from ..saved import inference_trainer, open_run
from ..session import load_data, resolve_paths
from ..summary import fmt


def evaluate(run_dir: str, data: str | None = None) -> int:
    """Prints loss and metrics of the run's model on its validation/test data, or on `data`."""
    run = open_run(run_dir)
    trainer, weights = inference_trainer(run)
    splits = _splits(run, data)
    print(f"run: {run.path}  (weights: {weights.name})")
    batch_size = run.config.data.batch_size
    for role, (X, y) in splits:
        try:
            logs = trainer.test((X, y), batch_size) if role == "test" else trainer.validate((X, y), batch_size)
        except (ValueError, TypeError) as err:
            raise UsageError(first_line(err)) from None
        values = "  ".join(f"{k} {fmt(v)}" for k, v in logs.items())
        print(f"{role:<5} {len(y):>6} samples  {values}")
    return 0


def _splits(run: Any, data: str | None) -> list[tuple[str, Pair]]:
    spec = run.spec
    if data is None or data.endswith(".toml"):
        config = run.config
        if data is not None:
            path = Path(data)
            config = resolve_paths(load_config(path), path.parent.resolve())
        prepared = load_data(config, spec)
        splits = [(role, pair) for role, pair in (("val", prepared.val), ("test", prepared.test)) if pair is not None]
        if not splits:
            print("gradloop: note: no validation or test data (data.val_split = 0): evaluating on the training data", file=sys.stderr)
            splits = [("train", prepared.train)]
        return splits
    table = read_table(Path(data), spec.target or "target", split="t10k")
    return [("test", (spec.inputs(table), spec.labels(table.y, table.where)))]


def predict(run_dir: str, input_path: str, out: str | None = None) -> int:
    """Writes one CSV row per input sample: prediction (original label names), prob_<label>..."""
    import torch

    run = open_run(run_dir)
    spec = run.spec
    table = read_table(Path(input_path), spec.target, split="t10k", target_required=False)
    X = spec.inputs(table)
    trainer, _ = inference_trainer(run)
    try:
        outputs = _checked(trainer.predict(X, run.config.data.batch_size), spec, len(X), run.config.train.step).float()
    except (ValueError, TypeError) as err:
        raise UsageError(first_line(err)) from None
    if spec.task == "classification":
        assert spec.classes is not None
        probs = torch.softmax(outputs, dim=1)  # of logits, or of log-probabilities (nll): softmax(log p) = p
        header = ["prediction", *(f"prob_{name}" for name in spec.classes)]
        labels = np.array(spec.classes, dtype=object)[probs.argmax(dim=1).numpy()]
        rows: list[list[Any]] = [[label, *(f"{p:.6g}" for p in row)] for label, row in zip(labels, probs.tolist())]
    else:
        values = outputs.reshape(len(X), -1).tolist()
        header = ["prediction"] if len(values[0]) == 1 else [f"prediction_{i}" for i in range(len(values[0]))]
        rows = [[f"{v:.6g}" for v in row] for row in values]
    _write_csv(header, rows, out)
    if out is not None:
        print(f"gradloop: wrote {len(rows)} predictions to {out}", file=sys.stderr)
    return 0


def _checked(outputs: Any, spec: Any, n: int, step: str | None) -> Any:
    """The model's outputs when they are predictions for the run's task, else a UsageError. A run
    trained with a `train.step` predicts with the model's forward all the same (the step computes
    a loss, not predictions): a forward that returns anything else is refused here, in one line."""
    import torch

    from ...step import describe

    if spec.task == "classification":
        classes = len(spec.classes or ())
        fits = isinstance(outputs, torch.Tensor) and outputs.ndim == 2 and tuple(outputs.shape) == (n, classes)
        wanted = f"a tensor ({n}, {classes}): one score per class"
    else:
        fits = isinstance(outputs, torch.Tensor) and outputs.ndim >= 1 and outputs.shape[0] == n
        wanted = f"a tensor with {n} rows"
    if fits:
        return outputs
    why = (
        f" (train.step {step!r} trained it, but predict calls the model itself): make model(x) return the predictions"
        if step is not None
        else ""
    )
    raise UsageError(f"gradloop predict needs the model's output for the inputs to be {wanted}; it is {describe(outputs)}{why}")


def _write_csv(header: list[str], rows: list[list[Any]], out: str | None) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    if out is None:
        sys.stdout.write(buffer.getvalue())
        return
    try:
        Path(out).write_text(buffer.getvalue())
    except OSError as err:
        raise UsageError(f"--out {out!r} cannot be written: {err.strerror}") from None
