"""A user's DataLoader over in-memory tensors, batched by index instead of sample by sample.

`DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)` fetches each sample on its own
and stacks them (`default_collate`): most of an epoch of a small model goes there. When the
loader is plain (a `TensorDataset`, or a `Subset` of one, possibly nested; the default collate;
a `BatchSampler` over a `SequentialSampler` or a `RandomSampler` without replacement), gradloop
gathers the same rows with one `index_select` per tensor and draws the same random numbers, from
the same generators and in the same order, as the loader's own iterator:

    iter(loader)      base seed: an int64 from `loader.generator` (or the global RNG)
                      (with persistent workers, only at the loader's first iteration)
    first batch       RandomSampler, generator=None: a seed from the global RNG, then
                      randperm(n) from a generator seeded with it; with its own generator:
                      randperm(n, generator=sampler.generator)
    last batch        with its own generator: one more randperm(n) (the sampler's empty tail)

so training gives the numbers `for x, y in loader:` gives, bit for bit. The epoch's order is
kept in the resume point (the seed, or the sampler generator's state before its draw): a resumed
run jumps to its batch. Workers change nothing here (they fetch the same samples), so
`num_workers` is not used. Anything else, and any loader under torchrun, is iterated as given.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, Subset, TensorDataset
from torch.utils.data._utils.collate import default_collate

from . import distributed
from .batches import TensorBatches, draw_seed, generator_states, permutation, set_generator_states


def _tensors_and_rows(dataset: Any) -> tuple[list[torch.Tensor], torch.Tensor | None] | None:
    """The TensorDataset's tensors under `dataset` and the rows a chain of Subsets selects (None: all)."""
    chain = []
    while isinstance(dataset, Subset):
        chain.append(dataset.indices)
        dataset = dataset.dataset
    if type(dataset) is not TensorDataset:
        return None
    rows = None
    for indices in reversed(chain):  # innermost first: each Subset indexes the one inside it
        selected = torch.as_tensor(list(indices), dtype=torch.int64)
        rows = selected if rows is None else rows[selected]
    return list(dataset.tensors), rows


def _cpu_or_none(generator: torch.Generator | None) -> bool:
    return generator is None or generator.device.type == "cpu"


def fast_path(loader: DataLoader) -> tuple[list[torch.Tensor], torch.Tensor | None] | None:
    """The tensors and rows to batch `loader` by index, or None when it must be iterated as given."""
    if type(loader) is not DataLoader or distributed.is_distributed():
        return None
    batch_sampler = loader.batch_sampler
    if type(batch_sampler) is not BatchSampler or loader.collate_fn is not default_collate:
        return None
    sampler = batch_sampler.sampler
    if type(sampler) is RandomSampler:
        if sampler.replacement or sampler._num_samples is not None or not _cpu_or_none(sampler.generator):
            return None
    elif type(sampler) is not SequentialSampler:
        return None
    if not _cpu_or_none(loader.generator) or (loader.num_workers > 0 and loader.worker_init_fn is not None):
        return None  # a worker_init_fn may change what the workers' dataset holds
    found = _tensors_and_rows(loader.dataset)
    if found is None or len(sampler.data_source) != len(loader.dataset):  # type: ignore[arg-type]
        return None
    return found


class IndexedLoaderBatches:
    """A plain DataLoader over in-memory tensors (see `fast_path`), batched by index.

    Batches are lists, as `default_collate` makes them from a TensorDataset's tuples.
    """

    def __init__(self, loader: DataLoader, tensors: list[torch.Tensor], rows: torch.Tensor | None, device: torch.device) -> None:
        self.loader = loader
        batch_sampler = loader.batch_sampler
        assert isinstance(batch_sampler, BatchSampler)
        self.sampler = batch_sampler.sampler
        self.tensors = TensorBatches(tensors, batch_sampler.batch_size, False, device, drop_last=batch_sampler.drop_last, rows=rows)
        # with persistent workers the loader draws its base seed only when it makes its one iterator
        self.base_seed_drawn = loader.persistent_workers and loader.num_workers > 0 and loader._iterator is not None
        self._permutation: tuple[dict[str, Any], torch.Tensor] | None = None  # the order new_order() drew, and its index

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def dataset_size(self) -> int:
        return self.tensors.num_samples

    def size_of_batch(self, index: int) -> int:
        return self.tensors.size_of_batch(index)

    def peek(self, n: int = 2) -> Any:
        return self.tensors.peek(n)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to pass on: the samplers of the fast path have no epochs."""

    def new_order(self) -> dict[str, Any]:
        """Draws what `iter(loader)` and its first batch draw; the order says how to redo the permutation."""
        if not self.base_seed_drawn:
            draw_seed(self.loader.generator)
            self.base_seed_drawn = self.loader.persistent_workers and self.loader.num_workers > 0
        if type(self.sampler) is not RandomSampler:
            return {"seed": None}
        n = len(self.sampler.data_source)
        generator = self.sampler.generator
        if generator is None:
            return {"seed": draw_seed()}
        order: dict[str, Any] = {"seed": None, "generator_state": generator.get_state()}
        self._permutation = (order, torch.randperm(n, generator=generator))
        torch.randperm(n, generator=generator)  # RandomSampler's tail, `randperm(n)[: num_samples % n]`, drawn as it ends
        return order

    def iterate(self, order: dict[str, Any], start_batch: int = 0) -> Iterator[Any]:
        index = None
        if self._permutation is not None and self._permutation[0] is order:
            index = self._permutation[1]
        elif order["seed"] is not None:
            index = permutation(self.tensors.num_samples, order["seed"])
        elif order.get("generator_state") is not None:  # a resumed epoch: the permutation from the saved state
            generator = torch.Generator()
            generator.set_state(order["generator_state"])
            index = torch.randperm(self.tensors.num_samples, generator=generator)
        self._permutation = None
        return self.tensors.batches_of(index, start_batch)

    def state_dict(self) -> dict[str, Any]:
        """The user's generators as they are now (a resumed run continues their streams)."""
        return {"generators": generator_states(self.loader), "base_seed_drawn": self.base_seed_drawn}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            set_generator_states(self.loader, state.get("generators"))
            self.base_seed_drawn = bool(state["base_seed_drawn"])
