"""The whole doctor on a digits CNN: how long a user waits before a long run (target: < 20 s on 2 cores).

The job (issue 6): sklearn's digits (1,797 8x8 images, 10 classes) as (N, 1, 8, 8) float32 inputs,
standardized; an 80/20 train/val split; a small CNN (two 3x3 convolutions, max-pool, two linear
layers); `gradloop.doctor(...)` with its default settings (200 overfit steps, a 100-step LR range
test, all 15 checks), writing doctor.json and lr_find.png into a temporary run directory.

    python bench/doctor.py                  # cold + warm runs, per-check times, the report
    python bench/doctor.py --runs 5 --json out.json

What is timed, wall-clock:
- "cold": the first `doctor(...)` call in a fresh process. It includes one-time costs a CLI user
  pays too: torch.optim's lazy import of torch._dynamo on the first optimizer (~3 s here),
  matplotlib's import for lr_find.png.
- "warm": later calls in the same process (median), i.e. what the checks themselves cost.
- "process": the whole `python bench/doctor.py` up to the end of the cold call, imports included.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

PROCESS_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

from gradloop.doctor import DoctorReport, doctor  # noqa: E402


def digits_images(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 1, 8, 8).astype(np.float32)
    X = (X - X.mean()) / X.std()  # one scale for all pixels: per-pixel scaling would amplify the empty borders
    order = np.random.default_rng(seed).permutation(len(X))
    cut = int(0.8 * len(X))
    train, val = order[:cut], order[cut:]
    return (torch.from_numpy(X[train]), torch.from_numpy(y[train])), (torch.from_numpy(X[val]), torch.from_numpy(y[val]))


def digits_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def run_once(train, val, run_dir: str) -> tuple[float, DoctorReport]:
    model = digits_cnn()
    started = time.perf_counter()
    report = doctor(model, train, loss="cross_entropy", val=val, optimizer="adam", lr=1e-3, run_dir=run_dir)
    return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2, the target box)")
    parser.add_argument("--runs", type=int, default=3, help="warm runs after the cold one (default 3)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, val = digits_images()
    with tempfile.TemporaryDirectory() as run_dir:
        cold, report = run_once(train, val, run_dir)
        process = time.perf_counter() - PROCESS_START
        warm = [run_once(train, val, run_dir)[0] for _ in range(args.runs)]
    print(report)
    print()
    print("per check (cold run), seconds:")
    for name, seconds in report.timings.items():
        print(f"  {name:<20} {seconds:7.3f}")
    print()
    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, python {sys.version.split()[0]}"
    )
    print(
        f"cold doctor(): {cold:.2f} s   warm doctor() (median of {len(warm)}): "
        f"{statistics.median(warm) if warm else float('nan'):.2f} s   process to end of cold call: {process:.2f} s"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "cold_s": cold,
                    "warm_s": warm,
                    "process_s": process,
                    "threads": args.threads,
                    "timings_cold": report.timings,
                    "ok": report.ok,
                },
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()
