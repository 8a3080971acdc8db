"""Checkpoint cost: gradloop's save/load against a plain torch.save/torch.load of the same state.

The job (issue 4, "Performance"): a 100M-parameter model (100 Linear(1000, 1000) layers) with
Adam state (after one step: exp_avg and exp_avg_sq), ~1.2 GB in all. Target: a gradloop save
costs at most 1.3x a plain `torch.save` of the same state dicts, a load at most 1.3x a plain
`torch.load(weights_only=True)`.

    python bench/checkpoint.py                     # the measurement: median of 3 (~1 minute, 4 GB of RAM)
    python bench/checkpoint.py --params 10 --runs 1   # a quick check (10M parameters)

What is timed, each in the same process, interleaved (torch, gradloop, torch, ...) so that drift
in machine load hits both alike, on files in one directory (default: a fresh temp directory):
- save: `torch.save(state, path)` vs `gradloop.persistence.checkpoint.save(state, path)`, the target removed
  first. gradloop's save includes what plain torch.save does not do: the SHA-256 checksum, fsync
  of the file and of the directory, and the atomic rename; for reference also `torch.save` + fsync.
- load: `torch.load(path, weights_only=True)` vs `gradloop.persistence.checkpoint.load(path)` (which verifies
  every byte against the checksum, then maps the file), both from the page cache.
- restore: load + `model.load_state_dict` + `optimizer.load_state_dict`, both ways: what a resume
  costs end to end (gradloop's mapped tensors are copied here rather than inside the load).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gradloop.persistence import checkpoint  # noqa: E402


def build(params_millions: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    layers = max(1, round(params_millions * 1e6 / 1_001_000))
    model = nn.Sequential(*[nn.Linear(1000, 1000) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()  # creates exp_avg and exp_avg_sq: two more copies of the weights
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    del result
    gc.collect()
    return elapsed, cpu


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=100, help="model size in millions of parameters")
    parser.add_argument("--runs", type=int, default=3, help="measurements per operation (the median is shown)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    model, optimizer = build(args.params)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain, ours = Path(tmp) / "plain.pt", Path(tmp) / "ours.ckpt"

        def torch_save() -> None:
            plain.unlink(missing_ok=True)
            torch.save(state, plain)

        def torch_save_fsync() -> None:
            torch_save()
            fsync_path(plain)

        def gradloop_save() -> None:
            ours.unlink(missing_ok=True)
            checkpoint.save(state, ours)

        def restore(loaded: dict[str, Any]) -> None:
            model.load_state_dict(loaded["model"])
            optimizer.load_state_dict(loaded["optimizer"])

        cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "save": (torch_save, gradloop_save),
            "save (torch.save + fsync)": (torch_save_fsync, gradloop_save),
            "load": (lambda: torch.load(plain, weights_only=True), lambda: checkpoint.load(ours)),
            "load + restore": (lambda: restore(torch.load(plain, weights_only=True)), lambda: restore(checkpoint.load(ours))),
        }
        times: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {name: ([], []) for name in cases}
        torch_save()
        gradloop_save()
        size_plain, size_ours = plain.stat().st_size, ours.stat().st_size
        for _ in range(args.runs):
            for name, (baseline, candidate) in cases.items():
                times[name][0].append(timed(baseline))
                times[name][1].append(timed(candidate))
        verify = [timed(lambda: checkpoint.verify(ours)) for _ in range(args.runs)]

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(
        f"{n_params / 1e6:.1f}M parameters + Adam state: torch.save file {size_plain / 1e9:.2f} GB, "
        f"gradloop {size_ours / 1e9:.2f} GB; torch {torch.__version__}, {cores} cores{load}; median of {args.runs}"
    )
    print(f"{'operation':<27}{'torch s':>9}{'gradloop s':>12}{'ratio':>7}   {'CPU s: torch':>13}{'gradloop':>10}{'ratio':>7}")
    results: dict[str, Any] = {}
    for name, (base, cand) in times.items():
        (b, bc), (c, cc) = (tuple(statistics.median(x) for x in zip(*runs)) for runs in (base, cand))
        results[name] = {"torch": base, "gradloop": cand, "ratio": c / b, "cpu_ratio": cc / bc}
        print(f"{name:<27}{b:>9.3f}{c:>12.3f}{c / b:>7.2f}   {bc:>13.3f}{cc:>10.3f}{cc / bc:>7.2f}")
    v, vc = (statistics.median(x) for x in zip(*verify))
    print(f"{'verify only (gradloop)':<27}{'':>9}{v:>12.3f}{'':>7}   {'':>13}{vc:>10.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"params": n_params, "cores": cores, "results": results, "verify": verify}, indent=2))


if __name__ == "__main__":
    main()
