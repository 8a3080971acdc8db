"""Speed on a GPU: gradloop against the hand-written floor and the tutorial loop, in one process.

Jobs: the benchmark MLP of `loop_overhead.py` (60,000 MNIST-shaped samples, Adam) at batch 64 and
1024 in float32, and a small ResNet-style CNN in `bf16-mixed` at batch 256. Data are resident on
the GPU for the floor and gradloop (gradloop keeps in-memory tensors there when they fit), and in
a `DataLoader(TensorDataset)` on the CPU for the tutorial loop, as the tutorials do. Each
variant runs one warm-up epoch, then `--epochs` timed ones (train + validation, synchronized at
the epoch's end); the table shows the median seconds per epoch and the ratio to the floor.
With `--compile`, gradloop also runs with `compile=True` (if this gradloop has it).

    python bench/gpu_speed.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from loop_overhead import make_data  # noqa: E402  # the same job as on the CPU

LR = 1e-3


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        Block(64),
        nn.MaxPool2d(2),
        Block(64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def timed(run_epoch: Callable[[], None], epochs: int) -> list[float]:
    run_epoch()  # warm-up
    torch.cuda.synchronize()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        run_epoch()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def autocast(bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)


def tutorial(make_model, data, batch: int, bf16: bool, epochs: int, **options: object) -> list[float]:
    X, y, Xv, yv = (t.cpu() for t in data)
    model = make_model().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    train = DataLoader(TensorDataset(X, y), batch_size=batch, shuffle=True, pin_memory=True)
    val = DataLoader(TensorDataset(Xv, yv), batch_size=batch, pin_memory=True)

    def epoch() -> None:
        model.train()
        total = 0.0
        for xb, yb in train:
            xb, yb = xb.cuda(non_blocking=True), yb.cuda(non_blocking=True)
            optimizer.zero_grad()
            with autocast(bf16):
                loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(yb)
        model.eval()
        with torch.no_grad():
            for xb, yb in val:
                with autocast(bf16):
                    loss_fn(model(xb.cuda()), yb.cuda()).item()

    return timed(epoch, epochs)


def floor(make_model, data, batch: int, bf16: bool, epochs: int, **options: object) -> list[float]:
    X, y, Xv, yv = data
    model = make_model().cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        model.train()
        loss_sum = torch.zeros((), device="cuda")
        order = torch.randperm(len(X), device="cuda")
        for start in range(0, len(X), batch):
            rows = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            with autocast(bf16):
                out = model(X[rows])
                loss = loss_fn(out, y[rows])
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(rows)
        model.eval()
        val_sum = torch.zeros((), device="cuda")
        with torch.inference_mode():
            for start in range(0, len(Xv), batch):
                with autocast(bf16):
                    val_sum += loss_fn(model(Xv[start : start + batch]), yv[start : start + batch])
        torch.stack([loss_sum, val_sum]).tolist()  # the one host read of the epoch

    return timed(epoch, epochs)


def gradloop(make_model, data, batch: int, bf16: bool, epochs: int, **options: object) -> list[float]:
    import gradloop as gl

    X, y, Xv, yv = data
    seconds: list[float] = []

    class Clock(gl.Callback):
        def on_epoch_start(self, trainer: gl.Trainer) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, trainer: gl.Trainer, logs: dict[str, float]) -> None:
            seconds.append(time.perf_counter() - self.start)  # logs are floats: the epoch's work is done

    trainer = gl.Trainer(
        make_model().cuda(),
        lr=LR,
        max_epochs=epochs + 1,
        device="cuda",
        precision="bf16-mixed" if bf16 else "32",
        callbacks=[Clock()],
        default_callbacks=False,
        **options,
    )
    trainer.fit((X, y), val=(Xv, yv), batch_size=batch)
    return seconds[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--compile", action="store_true", help="also gradloop with compile=True")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_speed.py needs a CUDA device")
    data = tuple(t.cuda() for t in make_data(args.samples, 10_000))
    jobs = [("mlp", mlp, 64, False), ("mlp", mlp, 1024, False), ("cnn", cnn, 256, True)]
    results = []
    for name, make_model, batch, bf16 in jobs:
        variants: dict[str, tuple[Callable[..., list[float]], dict[str, object]]] = {
            "floor": (floor, {}),
            "tutorial": (tutorial, {}),
            "gradloop": (gradloop, {}),
        }
        if args.compile:
            variants["gradloop_compile"] = (gradloop, {"compile": True})
        row: dict[str, object] = {"job": name, "batch": batch, "precision": "bf16-mixed" if bf16 else "32"}
        for variant, (run, options) in variants.items():
            try:
                row[variant] = statistics.median(run(make_model, data, batch, bf16, args.epochs, **options))
            except Exception as err:  # a variant this gradloop lacks (compile) is reported, not fatal
                row[variant] = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        results.append(row)
        floor_s = row["floor"]
        cells = [
            f"{v}={s:.3f}s ({s / floor_s:.3f}x floor)" if isinstance(s, float) and isinstance(floor_s, float) else f"{v}={s}"
            for v, s in row.items()
            if v not in ("job", "batch", "precision")
        ]
        print(f"{name} batch {batch} {row['precision']}: " + ", ".join(cells), flush=True)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "samples": args.samples, "epochs": args.epochs}
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()
