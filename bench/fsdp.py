"""FSDP vs DDP: step time of the benchmark MLP (784->128->10, Adam, batch 64; bench/loop_overhead.py's
job) on 2 Gloo ranks on the CPU, each strategy in its own `torchrun` launch.

    python bench/fsdp.py                          # 12,000 samples, 4 epochs (the first not counted)
    python bench/fsdp.py --samples 6000 --epochs 3 --nproc 2

Prints one line per strategy: the median epoch's time divided by its optimizer steps (each rank
trains on its half of the data), with the threads per rank fixed at 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def worker(strategy: str, samples: int, epochs: int, out: Path) -> None:
    import torch
    from loop_overhead import BATCH_SIZE, LR, make_data, make_model

    import gradloop as gl

    torch.set_num_threads(1)
    X, y, _, _ = make_data(samples, 1000)
    torch.manual_seed(0)
    trainer = gl.Trainer(make_model(), lr=LR, max_epochs=epochs, strategy=strategy, default_callbacks=False)
    history = trainer.fit((X, y), batch_size=BATCH_SIZE)
    if int(os.environ.get("RANK", "0")) == 0:
        times = [epoch["time"] for epoch in history.epochs[1:]]
        out.write_text(json.dumps({"epoch_s": statistics.median(times), "steps": trainer.batches_per_epoch}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=12_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("STRATEGY", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.samples, args.epochs, Path(args.worker[1]))
        return
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("ddp", "fsdp"):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            out = Path(tmp) / f"{strategy}.json"
            command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "--master_addr=127.0.0.1",
                       "--master_port", str(port), __file__, "--samples", str(args.samples), "--epochs", str(args.epochs),
                       "--worker", strategy, str(out)]  # fmt: skip
            subprocess.run(command, env=env, check=True, capture_output=True)
            result = json.loads(out.read_text())
            print(f"{strategy:5s} {1000 * result['epoch_s'] / result['steps']:.3f} ms/step ({result['steps']} steps/epoch per rank)")


if __name__ == "__main__":
    main()
