"""torch.compile against eager in gradloop: compile time and step time, on the CPU.

Two models on MNIST-shaped synthetic data (bench/loop_overhead.py's `make_data`): the benchmark MLP
(784->128->10, ReLU) and a small CNN (two 3x3 convolutions with 16 and 32 channels, max-pooling,
a linear head). Adam lr=1e-3, batch 64, with validation every epoch. Variants:

    eager            Trainer(model)
    compile          Trainer(model, compile=True): inductor, torch's default backend (C++ on the CPU)
    compile-static   Trainer(model, compile={"dynamic": False}): one graph per batch shape

Each run is a fresh process. `cold` runs get an empty inductor cache directory (the first compile
on a machine, or after torch changes); `warm` runs reuse the directory of the cold run (inductor's
on-disk cache: what a second run of the same script sees). Reported per run: the first epoch
(which holds every compile: the training graphs, then the smaller last batch, then the evaluation
graphs), the median of the later epochs, the compile overhead (first minus later), and the median
time of one training step (epoch's training part / steps).

    python bench/compile.py                      # both models, all variants, cold and warm
    python bench/compile.py --samples 3000 --epochs 3 --models mlp --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from loop_overhead import make_data  # noqa: E402  # the benchmark's data, one owner

VARIANTS = {"eager": False, "compile": True, "compile-static": {"dynamic": False}}


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
    )  # fmt: skip


def worker(model_name: str, variant: str, samples: int, epochs: int, threads: int) -> dict:
    import gradloop as gl

    torch.set_num_threads(threads)

    class Timer(gl.Callback):
        """Wall time of each epoch's training part (from its start to its last batch)."""

        def __init__(self) -> None:
            self.train: list[float] = []

        def on_epoch_start(self, trainer) -> None:
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, loss) -> None:
            self.last = time.perf_counter()

        def on_epoch_end(self, trainer, logs) -> None:
            self.train.append(self.last - self.started)

    X, y, Xv, yv = make_data(samples, samples // 6)
    timer = Timer()
    trainer = gl.Trainer(make_model(model_name), max_epochs=epochs, compile=VARIANTS[variant], callbacks=[timer], default_callbacks=False)
    started = time.perf_counter()
    history = trainer.fit((X, y), val=(Xv, yv), batch_size=64)
    total = time.perf_counter() - started
    steps = trainer.state.global_step // epochs
    return {
        "epoch_times": history["time"],
        "train_times": timer.train,
        "steps_per_epoch": steps,
        "fit_time": total,
        "val_accuracy": history["val_accuracy"][-1],
    }


def run(model_name: str, variant: str, cache: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "--worker", model_name, variant, str(args.samples), str(args.epochs), str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{model_name}/{variant} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    epochs, train = result["epoch_times"], result["train_times"]
    later = statistics.median(epochs[1:])
    return {
        "model": model_name,
        "variant": variant,
        "first_epoch_s": epochs[0],
        "later_epoch_s": later,
        "compile_overhead_s": epochs[0] - later,
        "step_ms": 1000 * statistics.median(train[1:]) / result["steps_per_epoch"],
        "val_accuracy": result["val_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, variant, samples, epochs, threads = args.worker
        print(json.dumps(worker(name, variant, int(samples), int(epochs), int(threads))))
        return
    rows = []
    for model_name in args.models.split(","):
        for variant in args.variants.split(","):
            with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
                states = ("cold", "warm") if variant != "eager" else ("-",)
                for state in states:
                    rows.append({**run(model_name, variant, cache, args), "cache": state})
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s), "
          f"{args.samples} samples, batch 64, {args.epochs} epochs")  # fmt: skip
    header = f"{'model':5} {'variant':15} {'cache':5} {'1st epoch s':>11} {'later s':>8} {'compile s':>9} {'step ms':>8} {'val acc':>8}"
    print(header)
    for r in rows:
        print(
            f"{r['model']:5} {r['variant']:15} {r['cache']:5} {r['first_epoch_s']:11.2f} {r['later_epoch_s']:8.3f} "
            f"{r['compile_overhead_s']:9.2f} {r['step_ms']:8.3f} {r['val_accuracy']:8.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
