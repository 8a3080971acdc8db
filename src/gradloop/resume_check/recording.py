"""What a run does, batch by batch: the model's inputs and outputs and each batch's loss, as fingerprints.

A `Recorder` is a callback (each batch's loss; where the epochs end; optionally: write the
checkpoint at one step and stop the process there) that also hooks the model's forward in
training mode (the inputs it is given, the global RNG states as it begins, the outputs it returns). Every tensor is fingerprinted
(shape, dtype and a digest of its bytes, which is what "bit-identical" compares); a CPU copy is
kept as long as the run's copies stay under a budget, so that a difference can say by how much.
Fingerprinting copies each tensor to the host: one sync per forward call, a cost the check pays
and training never does.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from ..callbacks.base import Callback
from ..data.devices import named_leaves

if TYPE_CHECKING:
    from ..trainer import Trainer

COPY_BUDGET = 256 << 20  # bytes of tensor copies kept per run for max-abs-diff reports


@dataclass(frozen=True)
class Fingerprint:
    shape: tuple[int, ...]
    dtype: torch.dtype
    digest: bytes
    copy: torch.Tensor | None = field(default=None, compare=False)  # None once the run's budget is spent; == ignores it


def fingerprint(tensor: torch.Tensor, keep: bool) -> Fingerprint:
    cpu = tensor.detach().to("cpu").contiguous()
    raw = cpu.reshape(-1).view(torch.uint8) if cpu.numel() else torch.empty(0, dtype=torch.uint8)
    digest = hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).digest()
    return Fingerprint(tuple(cpu.shape), cpu.dtype, digest, cpu.clone() if keep else None)


def rng_fingerprints() -> dict[str, Fingerprint]:
    """The global generators' states (python, numpy, torch CPU, the current CUDA device), as fingerprints."""
    _, keys, pos, *_ = np.random.get_state(legacy=True)
    states = {
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "numpy": torch.from_numpy(np.append(np.asarray(keys, dtype=np.int64), pos)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return {f"rng[{name!r}]": fingerprint(state, keep=False) for name, state in states.items()}


@dataclass
class Record:
    """One event of a run: a forward call (`what` "forward") or a batch's loss (`what` "loss")."""

    key: tuple[Any, ...]  # ("forward", epoch, batch, call) or ("loss", epoch, batch): the same event in every run
    global_step: int
    phase: str  # "the uninterrupted run", "before the interruption", "after the resume"
    values: dict[str, Fingerprint]

    @property
    def where(self) -> str:
        _, epoch, batch, *call = self.key
        calls = f", forward call {call[0] + 1}" if call and call[0] else ""
        return f"epoch {epoch}, batch {batch}{calls} (after {self.global_step} optimizer steps), {self.phase}"


class Interrupted(Exception):
    """Raised by a `Recorder` right after it wrote its checkpoint: the run ends as if the process died there."""


class Recorder(Callback):
    """Records the run; with `stop_at`, writes `checkpoint` right after that optimizer step and raises `Interrupted`.

    Runs after every other callback (`priority` 30), so their state after the step is in the file,
    as with `ModelCheckpoint(every_n_steps=...)`.
    """

    priority = 30

    def __init__(self, trainer: "Trainer", phase: str, stop_at: int | None = None, checkpoint: Path | None = None) -> None:
        self._trainer, self.phase, self.stop_at, self.checkpoint = trainer, phase, stop_at, checkpoint
        self.records: list[Record] = []
        self.epoch_end_steps: list[int] = []  # global step at each epoch's end
        self.stopped_where: str | None = None
        self._calls: dict[tuple[int, int], int] = {}
        self._copied = 0

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """The model's forward hooks, on for the block."""
        handles = [
            self._trainer.model.register_forward_pre_hook(self._on_forward_inputs, with_kwargs=True),
            self._trainer.model.register_forward_hook(self._on_forward_outputs),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        state = trainer.state
        self._add(("loss", state.epoch, state.batch_in_epoch - 1), {"loss": loss})
        if self.stop_at is not None and state.global_step >= self.stop_at and self.stopped_where is None:
            assert self.checkpoint is not None
            trainer.save_checkpoint(self.checkpoint)
            self.stopped_where = f"epoch {state.epoch}, after its batch {state.batch_in_epoch}"
            raise Interrupted(self.stopped_where)

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        self.epoch_end_steps.append(trainer.state.global_step)

    def _on_forward_inputs(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if module.training:
            state = self._trainer.state
            where = (state.epoch, state.batch_in_epoch)
            call = self._calls.get(where, 0)
            self._calls[where] = call + 1
            values = dict(named_leaves(list(args), "input"))
            values.update(named_leaves(kwargs, "input"))
            self._add(("forward", *where, call), values)
            self.records[-1].values.update(rng_fingerprints())  # as the forward begins: what dropout and sampling draw from

    def _on_forward_outputs(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if module.training and self.records and self.records[-1].key[0] == "forward":
            for name, tensor in named_leaves(output, "output"):
                self.records[-1].values[name] = self._fingerprint(tensor)

    def _add(self, key: tuple[Any, ...], tensors: dict[str, torch.Tensor]) -> None:
        values = {name: self._fingerprint(t) for name, t in tensors.items()}
        self.records.append(Record(key, self._trainer.state.global_step, self.phase, values))

    def _fingerprint(self, tensor: torch.Tensor) -> Fingerprint:
        size = tensor.numel() * tensor.element_size()
        keep = self._copied + size <= COPY_BUDGET
        self._copied += size if keep else 0
        return fingerprint(tensor, keep)
