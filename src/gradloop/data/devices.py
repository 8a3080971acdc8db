"""Device and precision selection: where the model runs and in which number format."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
PRECISION_ALIASES = {"32-true": "32", "fp32": "32", "bf16": "bf16-mixed", "16": "16-mixed", "fp16": "16-mixed"}


def sync_debug_mode() -> int:
    """torch.cuda's sync debug mode now (0: off; always 0 before CUDA is initialized)."""
    return torch.cuda.get_sync_debug_mode() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0


@contextlib.contextmanager
def sync_debug(mode: int) -> Iterator[None]:
    """torch.cuda's sync debug mode set to `mode` inside the block, and back afterwards.

    A user who sets `torch.cuda.set_sync_debug_mode("warn" | "error")` before `fit` has it applied
    to the training steps only: gradloop lifts it (`host_sync_allowed()`) for its documented host
    reads: the checks before the first step, each epoch's order, metrics, validation, logs and
    checkpoints, and inside an epoch the validations of `val_every_n_steps`, the step rows of
    `JSONLLogger(log_every_n_steps=...)`, the checkpoints of `ModelCheckpoint(every_n_steps=...)`
    and the live progress bar's loss (at most 10 reads a second). Under `16-mixed` torch's
    GradScaler reads its inf check on the host at every step (torch's design).
    """
    before = sync_debug_mode()
    if before == mode:
        yield
        return
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def host_sync_allowed() -> contextlib.AbstractContextManager[None]:
    """For one of gradloop's documented host reads (see `sync_debug`)."""
    return sync_debug(0)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """ "auto" (or None) picks cuda > mps > cpu; anything else must name an available device."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be 'auto', a device name like 'cuda:0', or a torch.device; received: device={device!r}")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available on this machine: use device='auto' or 'cpu'")
        index = resolved.index if resolved.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device("cuda", index)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available on this machine: use device='auto' or 'cpu'")
    return resolved


def resolve_precision(precision: str | int) -> str:
    """The canonical precision name ("32", "bf16-mixed", "16-mixed") for a name or an alias."""
    name = str(precision)
    name = PRECISION_ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(repr(p) for p in PRECISIONS)}")
    return name


@dataclass
class Precision:
    """Autocast and loss scaling for one precision setting on one device."""

    name: str
    device: torch.device
    scaler: torch.amp.GradScaler | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.name == "16-mixed":
            if self.device.type not in ("cuda", "cpu"):
                raise ValueError(f"precision='16-mixed' is not supported on {self.device.type}: use 'bf16-mixed' or '32'")
            self.scaler = torch.amp.GradScaler(self.device.type)
        if self.name == "bf16-mixed" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bf16-mixed' but this GPU does not support bfloat16: use '16-mixed'")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.name == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.name == "bf16-mixed" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], torch.Tensor] | None = None) -> None:
        if self.scaler is None:
            optimizer.step() if closure is None else optimizer.step(closure)  # type: ignore[arg-type]  # LBFGS takes a tensor
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


def tree_map(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """`fn` applied to every tensor inside tuples, lists and dicts, the structure kept."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, (list, tuple)):
        mapped = [tree_map(fn, item) for item in tree]
        return type(tree)(mapped) if not hasattr(tree, "_fields") else type(tree)(*mapped)
    if isinstance(tree, dict):
        return {key: tree_map(fn, value) for key, value in tree.items()}
    return tree


def named_leaves(tree: Any, name: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors inside tuples, lists and dicts (a PackedSequence, a Hugging Face output too), in order,
    each named by its place: `name[0]`, `name['labels']`."""
    if isinstance(tree, torch.Tensor):
        yield name, tree
    elif isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from named_leaves(value, f"{name}[{key!r}]")
    elif isinstance(tree, (tuple, list)):
        for i, value in enumerate(tree):
            yield from named_leaves(value, f"{name}[{i}]")


def leaves(tree: Any) -> Iterator[torch.Tensor]:
    """The tensors of `named_leaves`, without their names."""
    return (tensor for _, tensor in named_leaves(tree))


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Moves tensors (also inside tuples, lists and dicts) to `device`."""
    return tree_map(lambda t: t.to(device, non_blocking=non_blocking), batch)
