"""`fit(dataset, loader_options={...})`: the DataLoader settings of a Dataset that gradloop batches.

gradloop keeps its own resumable sampler (a resumed run jumps to its batch) and so owns the
batching: batch_size, shuffle, drop_last, sampler, batch_sampler and generator are not options.
The rest are DataLoader's, with DataLoader's meaning.

With workers (`num_workers > 0`) each batch carries a seed, derived from the epoch's base seed
(drawn from the run's torch RNG, as a DataLoader iterator draws it, and kept in the resume point)
and the batch's place in the epoch; the worker that loads the batch seeds python, numpy and torch
with it first. A Dataset that augments at random (in `__getitem__`, with any of the three) gives
the same batches on every run with `seed=N`, after a resume, and whichever worker loads a batch.
Without workers the Dataset draws from the process's own generators, as in the hand-written loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..util import did_you_mean, first_line, seed_everything

OPTIONS = (
    "num_workers",
    "persistent_workers",
    "prefetch_factor",
    "collate_fn",
    "pin_memory",
    "pin_memory_device",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "in_order",
)
# DataLoader arguments gradloop sets itself, and where the user says what they want instead
OWNED = {
    "batch_size": "pass fit(batch_size=...)",
    "shuffle": "pass fit(shuffle=...)",
    "drop_last": "gradloop keeps the last, smaller batch; pass a DataLoader of your own to drop it",
    "sampler": "pass a DataLoader of your own built with it",
    "batch_sampler": "pass a DataLoader of your own built with it",
    "generator": "the order comes from the run's torch RNG (Trainer(seed=...)); pass a DataLoader of your own to use a generator",
}


def build_loader(dataset: Any, options: dict[str, Any], device: torch.device, **owned: Any) -> DataLoader:
    """DataLoader(dataset, **owned, **options), pinned for CUDA unless the options say otherwise;
    DataLoader's own complaint about an option is one line naming loader_options."""
    try:
        return DataLoader(dataset, **owned, **{"pin_memory": device.type == "cuda", **options})
    except (TypeError, ValueError) as err:
        raise type(err)(f"loader_options {options!r}: {first_line(err)}") from None


def batch_seed(base_seed: int, rank: int, batch: int) -> int:
    """A well-mixed 63-bit seed for batch `batch` of the epoch whose base seed is `base_seed`."""
    state = np.random.SeedSequence([base_seed, rank, batch]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


class SeededIndices(list[int]):
    """A batch's sample indices and the seed its worker draws that batch's random numbers with."""

    def __init__(self, indices: list[int], seed: int) -> None:
        super().__init__(indices)
        self.seed = seed


class WorkerSeeded(Dataset[Any]):
    """The user's Dataset; in a worker, python, numpy and torch are seeded with each batch's seed first."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:  # torch's fetcher hands a whole batch here
        seed = getattr(indices, "seed", None)
        if seed is not None and get_worker_info() is not None:
            seed_everything(seed)
        getitems = getattr(self.dataset, "__getitems__", None)
        if callable(getitems):
            return list(getitems(list(indices)))
        return [self.dataset[i] for i in indices]


def loader_options_for(loader_options: Any, *data: Any) -> dict[str, Any]:
    """The options as a dict, for the Datasets among `data`; raises a one-line TypeError/ValueError for anything
    DataLoader's or gradloop's rules reject, and for options with no Dataset to apply to."""
    if loader_options is None:
        return {}
    if not isinstance(loader_options, dict):
        raise TypeError(f"loader_options must be a dict of DataLoader settings; received {type(loader_options).__name__}")
    for name in loader_options:
        if name in OWNED:
            raise ValueError(f"loader_options[{name!r}] is set by gradloop: {OWNED[name]}")
        if name not in OPTIONS:
            raise ValueError(f"unknown loader option {name!r}{did_you_mean(str(name), OPTIONS)}: loader_options takes {', '.join(OPTIONS)}")
    if loader_options and not any(isinstance(d, Dataset) for d in data):
        kinds = ", ".join(sorted({type(d).__name__ for d in data if d is not None}))
        raise ValueError(
            f"loader_options apply to a Dataset that gradloop batches; this data is {kinds}: "
            "build your DataLoader with those settings, or pass the Dataset"
        )
    return dict(loader_options)
