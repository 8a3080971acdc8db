"""Loop overhead: the tutorial loop, a hand-written floor and gradloop, each in its own process.

The job (issue 2, "Performance"): a 784->128->10 MLP (ReLU), Adam lr=1e-3, batch 64, on 60,000
synthetic MNIST-shaped samples (float32 in [0, 1], 10 classes, fixed seed) plus 10,000 for
validation, on the CPU with `torch.set_num_threads(2)`.

    python bench/loop_overhead.py                          # the full measurement (a few minutes)
    python bench/loop_overhead.py --samples 6000 --epochs 2 --import-runs 0   # a quick check
    python bench/loop_overhead.py --variants tutorial,floor,gradloop --runs 3 --json out.json
    python bench/loop_overhead.py --check-optimizers       # foreach/fused vs. default, bit for bit

Variants (one function each below): `tutorial` (DataLoader(TensorDataset), `.item()` per step),
`floor` (hand-written: randperm, index slicing, sums on the device, one sync per epoch),
`gradloop` ((X, y) tensors, no default callbacks), `gradloop_loader` (the user's
DataLoader(TensorDataset)s, which gradloop batches by index with the loader's own random draws;
compare with `tutorial`: the same batches and numbers, target at most 0.80x its epoch time),
`gradloop_callbacks` (default callbacks and a run_dir; compare with
`gradloop`), and what could go below the floor: `floor_foreach`, `floor_fused` (Adam's other
implementations), `floor_index_select` (X.index_select(0, rows) for X[rows]), `gradloop_fused`.

What is timed: an epoch is one pass over the training data plus validation, measured wall-clock
from the end of the previous epoch to the end of this one (so callbacks' epoch-end work, such as
writing metrics.csv and checkpoints, counts). Every process runs one warm-up epoch first, which
is not counted; the table shows the median of the measured epochs (over all `--runs` processes
of a variant, which run interleaved with the other variants so that drift in machine load hits
all of them alike), their minimum, and the CPU seconds of the process per epoch. The model's
initial weights are the same in every variant (`torch.manual_seed(0)`), and the tutorial loop
and gradloop draw the same batch order, so their accuracies agree exactly. Workers' output is
captured (not a terminal), so gradloop's progress display prints one line per epoch, no live bar.

Needs a quiet machine: where other processes compete for the cores, torch's worker threads
spin while waiting for a descheduled sibling, and epochs take several times as long (CPU seconds
too). On a shared machine `--threads 1` gives usable relative numbers.

Also timed: `python -c "import gradloop"` minus `python -c "import torch"` (median of 5 each).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

BATCH_SIZE = 64
LR = 1e-3
VAL_SAMPLES = 10_000


# ----------------------------------------------------------------------------- the job
def make_data(samples: int, val_samples: int) -> tuple[torch.Tensor, ...]:
    """MNIST-shaped images in [0, 1] that an MLP learns the way it learns MNIST.

    Each class has a random stroke pattern over about 20% of the pixels; a sample shows half of
    it at random intensities plus sparse noise, and 10% of the labels are random. Why not
    `torch.rand` images with random labels: nothing can be learned, most ReLUs die within an
    epoch, and Adam's moments of the dead weights decay into subnormal floats, whose arithmetic
    is 20-50x slower on x86 CPUs; the epochs would time subnormal math instead of the loop.
    """
    generator = torch.Generator().manual_seed(1234)
    patterns = (torch.rand(10, 784, generator=generator) < 0.2).float()

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=generator)
        shown = torch.rand(n, 784, generator=generator) < 0.5
        ink = patterns[y] * shown * (0.5 + 0.5 * torch.rand(n, 784, generator=generator))
        noise = torch.rand(n, 784, generator=generator) * (torch.rand(n, 784, generator=generator) < 0.15)
        relabel = torch.rand(n, generator=generator) < 0.1
        y = torch.where(relabel, torch.randint(0, 10, (n,), generator=generator), y)
        return (ink + noise).clamp(0, 1).reshape(n, 1, 28, 28), y

    return (*draw(samples), *draw(val_samples))


def make_model() -> nn.Module:
    torch.manual_seed(0)  # same initial weights in every variant; also fixes the shuffling that follows
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


class Clock:
    """Marks the end of each epoch, in wall-clock and in this process's CPU time."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.marks = [(time.perf_counter(), time.process_time())]

    def tick(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def seconds(self, which: int = 0) -> list[float]:
        """Per-epoch wall-clock seconds (which=0) or CPU seconds of all threads (which=1)."""
        return [b[which] - a[which] for a, b in zip(self.marks, self.marks[1:])]


# ----------------------------------------------------------------------------- the variants
# Each runs `epochs` epochs, calls clock.tick() at the end of each, and returns the last
# epoch's validation accuracy.


def tutorial(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock) -> float:
    """The loop the PyTorch tutorials teach: DataLoader(TensorDataset), .item() every step."""
    X, y, X_val, y_val = data
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    train_loader = DataLoader(TensorDataset(X, y), batch_size=BATCH_SIZE, shuffle=True)
    val_loader = DataLoader(TensorDataset(X_val, y_val), batch_size=BATCH_SIZE)
    for _ in range(epochs):
        model.train()
        running_loss, correct = 0.0, 0
        for xb, yb in train_loader:
            optimizer.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * xb.size(0)
            correct += (out.argmax(1) == yb).sum().item()
        epoch_loss, epoch_accuracy = running_loss / len(X), correct / len(X)  # noqa: F841  # what the tutorial prints
        model.eval()
        val_loss, val_correct = 0.0, 0
        with torch.no_grad():
            for xb, yb in val_loader:
                out = model(xb)
                val_loss += loss_fn(out, yb).item() * xb.size(0)
                val_correct += (out.argmax(1) == yb).sum().item()
        val_accuracy = val_correct / len(X_val)
        clock.tick()
    return val_accuracy


def floor(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock, index_select: bool = False, **optimizer_options: bool) -> float:
    """Hand-written and lean: a randperm per epoch, index slicing, sums on the device, one sync per epoch."""
    X, y, X_val, y_val = data
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, **optimizer_options)
    loss_fn = nn.CrossEntropyLoss()
    n, n_val = len(X), len(X_val)
    for _ in range(epochs):
        model.train()
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        order = torch.randperm(n)
        for start in range(0, n, BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            if index_select:  # the same rows, copied whole instead of through advanced indexing
                xb, yb = X.index_select(0, rows), y.index_select(0, rows)
            else:
                xb, yb = X[rows], y[rows]
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(rows)
            correct += (out.argmax(1) == yb).sum()
        model.eval()
        val_loss_sum, val_correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        with torch.inference_mode():
            for start in range(0, n_val, BATCH_SIZE):
                xb, yb = X_val[start : start + BATCH_SIZE], y_val[start : start + BATCH_SIZE]
                out = model(xb)
                val_loss_sum += loss_fn(out, yb) * len(yb)
                val_correct += (out.argmax(1) == yb).sum()
        # the one host sync of the epoch
        loss_total, correct_total, val_loss_total, val_correct_total = torch.stack(
            [loss_sum.double(), correct.double(), val_loss_sum.double(), val_correct.double()]
        ).tolist()
        clock.tick()
    return val_correct_total / n_val


def floor_foreach(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock) -> float:
    """The floor with Adam(foreach=True): bit-identical to the default on CPU (see --check-optimizers)."""
    return floor(data, epochs, clock, foreach=True)


def floor_fused(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock) -> float:
    """The floor with Adam(fused=True): faster on CPU, but NOT bit-identical to the default."""
    return floor(data, epochs, clock, fused=True)


def floor_index_select(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock) -> float:
    """The floor with X.index_select(0, rows) for X[rows]: the same batches, cheaper to gather on CPU."""
    return floor(data, epochs, clock, index_select=True)


def _gradloop(
    data: tuple[torch.Tensor, ...], epochs: int, clock: Clock, *, loaders: bool = False, defaults: bool = False, **trainer_options: object
) -> float:
    import gradloop as gl

    class EpochClock(gl.Callback):
        priority = 10**9  # runs after every other callback, so their epoch-end work is timed too

        def on_fit_start(self, trainer: gl.Trainer) -> None:
            clock.start()

        def on_epoch_end(self, trainer: gl.Trainer, logs: dict[str, float]) -> None:
            clock.tick()

    X, y, X_val, y_val = data
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = gl.Trainer(
            make_model(),
            optimizer="adam",
            lr=LR,
            loss="cross_entropy",
            metrics=["accuracy"],
            callbacks=[EpochClock()],
            max_epochs=epochs,
            device="cpu",
            default_callbacks=defaults,
            run_dir=run_dir if defaults else None,
            **trainer_options,
        )
        if loaders:
            train = DataLoader(TensorDataset(X, y), batch_size=BATCH_SIZE, shuffle=True)
            val = DataLoader(TensorDataset(X_val, y_val), batch_size=BATCH_SIZE)
            history = trainer.fit(train, val=val)
        else:
            history = trainer.fit((X, y), val=(X_val, y_val), batch_size=BATCH_SIZE)
    return history["val_accuracy"][-1]


def gradloop(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock) -> float:
    """gl.Trainer fed (X, y) tensors, no default callbacks."""
    return _gradloop(data, epochs, clock)


def gradloop_loader(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock) -> float:
    """gl.Trainer fed the user's own DataLoaders (compare with the tutorial loop)."""
    return _gradloop(data, epochs, clock, loaders=True)


def gradloop_callbacks(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock) -> float:
    """gl.Trainer with the default callbacks and a run_dir (a temporary directory)."""
    return _gradloop(data, epochs, clock, defaults=True)


def gradloop_fused(data: tuple[torch.Tensor, ...], epochs: int, clock: Clock) -> float:
    """gl.Trainer with optimizer_options={"fused": True} (what choosing fused by name would give)."""
    return _gradloop(data, epochs, clock, optimizer_options={"fused": True})


VARIANTS: dict[str, Callable[[tuple[torch.Tensor, ...], int, Clock], float]] = {
    "tutorial": tutorial,
    "floor": floor,
    "gradloop": gradloop,
    "gradloop_loader": gradloop_loader,
    "gradloop_callbacks": gradloop_callbacks,
    "floor_foreach": floor_foreach,
    "floor_fused": floor_fused,
    "floor_index_select": floor_index_select,
    "gradloop_fused": gradloop_fused,
}


# ----------------------------------------------------------------------------- one variant, one process
def worker(variant: str, args: argparse.Namespace) -> None:
    """Runs one variant (1 warm-up + `epochs` epochs) and writes its timings as JSON to args.result."""
    torch.set_num_threads(args.threads)
    data = make_data(args.samples, args.val_samples)
    clock = Clock()
    val_accuracy = VARIANTS[variant](data, args.epochs + 1, clock)
    seconds, cpu_seconds = clock.seconds(0), clock.seconds(1)
    result = {
        "warmup_seconds": seconds[0],
        "epoch_seconds": seconds[1:],
        "epoch_cpu_seconds": cpu_seconds[1:],
        "val_accuracy": val_accuracy,
    }
    Path(args.result).write_text(json.dumps(result))


def run_worker(variant: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            variant,
            "--result",
            str(result),
            "--epochs",
            str(args.epochs),
            "--samples",
            str(args.samples),
            "--val-samples",
            str(args.val_samples),
            "--threads",
            str(args.threads),
        ]
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
        if done.returncode != 0:
            sys.exit(f"variant {variant!r} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
        return json.loads(result.read_text())


# ----------------------------------------------------------------------------- import time
def import_overhead(runs: int) -> dict[str, float]:
    """Median wall time of `python -c "import gradloop"` minus that of `python -c "import torch"`."""
    times: dict[str, list[float]] = {"torch": [], "gradloop": []}
    for _ in range(runs):
        for module in times:  # interleaved, so load drift affects both alike
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
            times[module].append(time.perf_counter() - started)
    torch_s, gradloop_s = statistics.median(times["torch"]), statistics.median(times["gradloop"])
    return {"import_torch_s": torch_s, "import_gradloop_s": gradloop_s, "overhead_s": gradloop_s - torch_s}


# ----------------------------------------------------------------------------- optimizer implementations
def check_optimizers(steps: int = 200, threads: int = 2) -> list[dict]:
    """Are the foreach and fused implementations of Adam, AdamW and SGD bit-identical to the default
    on CPU after `steps` steps of this MLP, and how long does one optimizer step take?"""
    torch.set_num_threads(threads)
    X, y, _, _ = make_data(steps * BATCH_SIZE, 1)
    cases = [
        ("adam", torch.optim.Adam, {"lr": LR}),
        ("adamw", torch.optim.AdamW, {"lr": LR}),
        ("sgd", torch.optim.SGD, {"lr": 0.01}),
        ("sgd+momentum", torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    ]

    def train(cls: type, options: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model = make_model()
        optimizer = cls(model.parameters(), **options)
        for b in range(steps):
            xb, yb = X[b * BATCH_SIZE : (b + 1) * BATCH_SIZE], y[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()], [p.grad.clone() for p in model.parameters()]

    def step_seconds(cls: type, options: dict, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> float:
        # A fresh optimizer each time: stepping one optimizer thousands of times on the same gradients
        # decays Adam's moments of zero-gradient weights into subnormal floats, which are slow.
        params = [w.clone().requires_grad_() for w in weights]
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        optimizer = cls(params, **options)
        optimizer.step()  # creates the optimizer state
        started = time.perf_counter()
        for _ in range(20):
            optimizer.step()
        return (time.perf_counter() - started) / 20

    rows = []
    for name, cls, options in cases:
        impls = {impl: options if impl == "default" else {**options, impl: True} for impl in ("default", "foreach", "fused")}
        trained = {impl: train(cls, impl_options) for impl, impl_options in impls.items()}
        weights, grads = trained["default"]
        timings: dict[str, list[float]] = {impl: [] for impl in impls}
        for _ in range(25):  # interleaved across implementations, so load drift hits all alike
            for impl, impl_options in impls.items():
                timings[impl].append(step_seconds(cls, impl_options, weights, grads))
        for impl in impls:
            other = trained[impl][0]
            rows.append(
                {
                    "optimizer": name,
                    "implementation": impl,
                    "bit_identical": all(torch.equal(a, b) for a, b in zip(weights, other)),
                    "max_abs_diff": max((a - b).abs().max().item() for a, b in zip(weights, other)),
                    "step_us_median": statistics.median(timings[impl]) * 1e6,
                    "step_us_min": min(timings[impl]) * 1e6,
                    "speedup_median": statistics.median(timings["default"]) / statistics.median(timings[impl]),
                }
            )
    print(f"optimizer implementations on CPU ({threads} threads), the MLP after {steps} steps, torch {torch.__version__}")
    print(f"{'optimizer':<14}{'impl':<9}{'weights vs default':<30}{'step us (median)':>17}{'min':>7}{'speedup':>9}")
    for r in rows:
        verdict = "bit-identical" if r["bit_identical"] else f"differ (max |diff| {r['max_abs_diff']:.1e})"
        print(
            f"{r['optimizer']:<14}{r['implementation']:<9}{verdict:<30}{r['step_us_median']:>17.0f}"
            f"{r['step_us_min']:>7.0f}{r['speedup_median']:>8.2f}x"
        )
    return rows


# ----------------------------------------------------------------------------- report
def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for variant, runs in results.items():
        epochs = [s for run in runs for s in run["epoch_seconds"]]
        cpu = [s for run in runs for s in run["epoch_cpu_seconds"]]
        summary[variant] = {
            "median_epoch_s": statistics.median(epochs),
            "min_epoch_s": min(epochs),
            "median_epoch_cpu_s": statistics.median(cpu),
            "epoch_seconds": epochs,
            "warmup_seconds": [run["warmup_seconds"] for run in runs],
            "val_accuracy": runs[-1]["val_accuracy"],
        }
    for variant in summary:
        for reference in ("tutorial", "floor"):
            if reference in summary:
                summary[variant][f"ratio_{reference}"] = summary[variant]["median_epoch_s"] / summary[reference]["median_epoch_s"]
    return summary


def print_table(summary: dict[str, dict]) -> None:
    print("median epoch seconds (wall clock, incl. validation); ratios of medians. min and CPU seconds help read noisy runs.")
    print(f"{'variant':<20}{'median s':>9}{'x tutorial':>11}{'x floor':>9}{'min s':>8}{'cpu s':>8}{'val acc':>9}   epochs (s)")
    for variant, row in summary.items():
        ratios = [f"{row[k]:.3f}" if k in row else "-" for k in ("ratio_tutorial", "ratio_floor")]
        epochs = " ".join(f"{s:.2f}" for s in row["epoch_seconds"])
        print(
            f"{variant:<20}{row['median_epoch_s']:>9.3f}{ratios[0]:>11}{ratios[1]:>9}{row['min_epoch_s']:>8.3f}"
            f"{row['median_epoch_cpu_s']:>8.3f}{row['val_accuracy']:>9.4f}   {epochs}"
        )
    if "gradloop_loader" in summary and "tutorial" in summary:
        ratio = summary["gradloop_loader"]["median_epoch_s"] / summary["tutorial"]["median_epoch_s"]
        print(f"gradloop fed the tutorial's DataLoader(TensorDataset) takes {ratio:.2f}x the tutorial loop's epoch (target: at most 0.80x)")
    if "gradloop" in summary and "gradloop_callbacks" in summary:
        extra = summary["gradloop_callbacks"]["median_epoch_s"] / summary["gradloop"]["median_epoch_s"] - 1
        print(f"default callbacks + run_dir cost {extra:+.1%} over gradloop without callbacks (target: within 3%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs per process, after one warm-up epoch (default 3)")
    parser.add_argument("--samples", type=int, default=60_000, help="training samples (default 60000; fewer for a quick run)")
    parser.add_argument(
        "--val-samples", type=int, default=None, help=f"validation samples (default {VAL_SAMPLES}, scaled down with --samples)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--runs", type=int, default=1, help="processes per variant, interleaved; the median is over all their epochs")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--import-runs", type=int, default=5, help="runs of each import for the import-time median (0: skip)")
    parser.add_argument("--check-optimizers", action="store_true", help="compare fused/foreach optimizers with the default, then exit")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.val_samples is None:
        args.val_samples = min(VAL_SAMPLES, max(1, args.samples // 6))
    if args.worker:
        return worker(args.worker, args)
    if args.check_optimizers:
        rows = check_optimizers(threads=args.threads)
        if args.json:
            Path(args.json).write_text(json.dumps({"optimizers": rows}, indent=2))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    print(
        f"{args.samples} samples + {args.val_samples} validation, batch {BATCH_SIZE}, {args.threads} threads, "
        f"1 warm-up + {args.epochs} epochs x {args.runs} run(s); torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.runs):
        for variant in variants:
            results[variant].append(run_worker(variant, args))
    summary = summarize(results)
    print_table(summary)
    imports = import_overhead(args.import_runs) if args.import_runs > 0 else None
    if imports:
        print(
            f"import gradloop adds {imports['overhead_s']:.3f} s to import torch "
            f"({imports['import_gradloop_s']:.3f} s vs {imports['import_torch_s']:.3f} s, median of {args.import_runs}; target < 0.3 s)"
        )
    if args.json:
        config = {k: getattr(args, k) for k in ("epochs", "samples", "val_samples", "runs", "threads")}
        report = {"config": config, "torch": torch.__version__, "python": platform.python_version(), "variants": summary, "import": imports}
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
