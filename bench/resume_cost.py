"""Resume cost: the time from `fit(..., resume=...)` to the first step after the resumed position.

A run is stopped (SIGTERM, as a preempted job is) at 10%, 50% and 90% of its first epoch of
60,000 MNIST-shaped samples, then resumed; the time is measured from the call to `fit` to the end
of the first optimizer step after the resume. gradloop jumps to the position (target: flat, the
same at 90% as at 10%) for every kind of training data measured:

    tensors      (X, y) in memory
    dataset      a map-style Dataset with loader_options={"num_workers": 2}
    fast_loader  the user's DataLoader(TensorDataset(X, y), shuffle=True), batched by index
    stateful     torchdata's StatefulDataLoader over the Dataset (its state_dict in the checkpoint)
    replayed     the user's DataLoader with a collate_fn of its own: the one kind that is replayed
                 (the skipped batches are loaded again), shown for comparison

Also: the epoch time of a Dataset that decodes every sample (PNG files with Pillow, a random
24x24 crop) with num_workers 0 and 2.

    python bench/resume_cost.py                      # 60,000 samples (a few minutes)
    python bench/resume_cost.py --samples 6000       # a quick check
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

import gradloop as gl

BATCH_SIZE = 64
FRACTIONS = (0.1, 0.5, 0.9)


class Pairs(Dataset):
    def __init__(self, X: torch.Tensor, y: torch.Tensor) -> None:
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[i], self.y[i]


class Decoding(Dataset):
    """PNG files decoded per sample (Pillow), then a random 24x24 crop: what an image pipeline does."""

    def __init__(self, pngs: list[bytes], y: torch.Tensor) -> None:
        self.pngs, self.y = pngs, y

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(self.pngs[i])), dtype=np.uint8).copy())
        top, left = torch.randint(0, 5, (2,)).tolist()
        crop = image[top : top + 24, left : left + 24].unsqueeze(0)
        return crop.float().div_(255), self.y[i]


def encode_png(images: torch.Tensor) -> list[bytes]:
    from PIL import Image

    pngs = []
    for image in images.squeeze(1).numpy():
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        pngs.append(out.getvalue())
    return pngs


def make_data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(samples, 1, 28, 28, generator=generator), torch.randint(0, 10, (samples,), generator=generator)


def make_model(inputs: int = 784) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 10))


def kinds(X: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], tuple[Any, dict[str, Any]]]]:
    """Each: () -> (training data, fit options)."""

    def stateful() -> tuple[Any, dict[str, Any]]:
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(Pairs(X, y), batch_size=BATCH_SIZE, shuffle=True), {}

    return {
        "tensors": lambda: ((X, y), {"batch_size": BATCH_SIZE}),
        "dataset": lambda: (Pairs(X, y), {"batch_size": BATCH_SIZE, "loader_options": {"num_workers": 2}}),
        "fast_loader": lambda: (DataLoader(TensorDataset(X, y), batch_size=BATCH_SIZE, shuffle=True), {}),
        "stateful": stateful,
        "replayed": lambda: (DataLoader(TensorDataset(X, y), batch_size=BATCH_SIZE, shuffle=True, collate_fn=own_collate), {}),
    }


def own_collate(samples: list[Any]) -> Any:
    """default_collate under another name: takes the loader off gradloop's fast path."""
    return default_collate(samples)


class StopAt(gl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: gl.Trainer, loss: torch.Tensor) -> None:
        if trainer.state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class FirstStep(gl.Callback):
    """Records when the first step of this fit ends, then stops."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_train_batch_end(self, trainer: gl.Trainer, loss: torch.Tensor) -> None:
        self.at = time.perf_counter()
        trainer.should_stop = True


def trainer(run_dir: Path, callback: gl.Callback) -> gl.Trainer:
    return gl.Trainer(
        make_model(), lr=1e-3, max_epochs=1, metrics=[], seed=0, run_dir=run_dir, callbacks=[callback], default_callbacks=False
    )


def resume_seconds(make: Callable[[], tuple[Any, dict[str, Any]]], step: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        data, options = make()
        try:
            trainer(run_dir, StopAt(step)).fit(data, **options)
        except SystemExit:
            pass
        data, options = make()
        first = FirstStep()
        resumed = trainer(run_dir, first)
        started = time.perf_counter()
        resumed.fit(data, resume="last", **options)
        assert first.at is not None and resumed.state.global_step == step + 1
        return first.at - started


def epoch_seconds(pngs: list[bytes], y: torch.Tensor, num_workers: int) -> float:
    trainer = gl.Trainer(make_model(24 * 24), lr=1e-3, max_epochs=1, metrics=[], seed=0, default_callbacks=False)
    started = time.perf_counter()
    trainer.fit(Decoding(pngs, y), batch_size=BATCH_SIZE, loader_options={"num_workers": num_workers})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60_000, help="samples in the epoch (default 60000)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--decode-samples", type=int, default=20_000, help="PNG images for the decoding Dataset (default 20000)")
    parser.add_argument("--kinds", default="tensors,dataset,fast_loader,stateful,replayed", help="comma-separated kinds of data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    X, y = make_data(args.samples)
    steps = -(-args.samples // BATCH_SIZE)
    chosen = {name: make for name, make in kinds(X, y).items() if name in args.kinds.split(",")}
    print(f"{args.samples} samples, batch {BATCH_SIZE} ({steps} steps per epoch), {args.threads} threads; torch {torch.__version__}")
    print("seconds from fit(resume=...) to the end of the first step after the resumed position")
    print(f"{'kind':<12}" + "".join(f"{f'at {f:.0%}':>10}" for f in FRACTIONS))
    for name, make in chosen.items():
        cells = [resume_seconds(make, max(1, int(fraction * steps))) for fraction in FRACTIONS]
        print(f"{name:<12}" + "".join(f"{seconds:>10.3f}" for seconds in cells), flush=True)
    pngs = encode_png((X[: args.decode_samples] * 255).to(torch.uint8))
    for workers in (0, 2):
        seconds = epoch_seconds(pngs, y[: args.decode_samples], workers)
        print(f"PNG-decoding Dataset ({len(pngs)} samples), num_workers={workers}: {seconds:.2f} s per epoch", flush=True)


if __name__ == "__main__":
    main()
