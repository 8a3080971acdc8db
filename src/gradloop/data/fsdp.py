"""strategy="fsdp": FSDP2 (`torch.distributed.fsdp.fully_shard`) under torchrun.

The default policy shards each direct child of the model that holds parameters, then the model
itself; `fsdp_policy=callable(model) -> modules` chooses the modules instead (the root is always
sharded last). In one process (no torchrun) nothing is sharded: the model trains as one process,
as with "ddp". Parameters become DTensors; a full copy of the weights is gathered only to export
them (`full_state_dict`).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed

Policy = Callable[[nn.Module], Iterable[nn.Module]]


def default_policy(model: nn.Module) -> list[nn.Module]:
    """Each direct child that holds parameters."""
    return [child for child in model.children() if any(True for _ in child.parameters())]


def check_policy(policy: Any) -> None:
    if policy is not None and not callable(policy):
        raise TypeError(f"fsdp_policy must be a function model -> modules to shard, or None; received: fsdp_policy={policy!r}")


def shard(model: nn.Module, policy: Policy | None, precision: str) -> None:
    """Applies `fully_shard` in place: the policy's modules, then the root (bf16-mixed: bf16 params, fp32 reduce)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    bf16 = precision == "bf16-mixed"
    mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    modules = list((policy or default_policy)(model))
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(f"fsdp_policy must return nn.Modules of the model; it returned {module!r}")
        if module is not model:
            fully_shard(module, mp_policy=mixed)
    fully_shard(model, mp_policy=mixed)


def is_sharded(model: nn.Module) -> bool:
    if "torch.distributed.fsdp" not in sys.modules:  # not sharded, and importing it would cost a second
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def inference(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """`torch.inference_mode()`, or `no_grad()` for a sharded model (FSDP's all-gather buffers must stay normal tensors)."""
    return torch.no_grad() if is_sharded(model) else torch.inference_mode()


def check_optimizer(spec: Any) -> None:
    """An optimizer instance holds the unsharded parameters: FSDP needs a name or a factory."""
    if isinstance(spec, torch.optim.Optimizer):
        raise TypeError(
            f"strategy='fsdp' shards the parameters before the optimizer is built, so an optimizer instance "
            f"({type(spec).__name__}) would update the unsharded ones: pass a name ('adamw') or a factory "
            f"(lambda params: torch.optim.AdamW(params, lr=1e-3))"
        )


def check_callbacks(callbacks: Iterable[Any]) -> None:
    """Callbacks that keep a second copy of the weights (EMA, SWA, best weights) copy whole tensors: not of shards."""
    from ..callbacks.base import SUPPLIES

    for callback in callbacks:
        if any(callback.listens(question) for question in SUPPLIES):
            raise ValueError(
                f"{type(callback).__name__} keeps its own copy of the weights, which strategy='fsdp' does not support yet: "
                f"leave it out or use strategy='ddp'"
            )


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Within an accumulation group only the last backward reduces gradients: DDP's `no_sync`, FSDP's flag."""
    if isinstance(model, DistributedDataParallel):
        return model.no_sync() if not enabled else contextlib.nullcontext()
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)  # type: ignore[operator]
    return contextlib.nullcontext()


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_`; the total norm of sharded gradients (a DTensor) as a plain tensor."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on the CPU (a collective under FSDP: call it on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))  # type: ignore[return-value]


class StopChannel:
    """`distributed.StopChannel`'s role without DDP's comm hook: each rank's flag is summed by a
    non-blocking all-reduce over the CPU side channel, started after a step and read after the next."""

    def __init__(self) -> None:
        self._local = 0.0
        self._pending: tuple[Any, torch.Tensor] | None = None

    @property
    def local(self) -> float:
        return self._local

    @local.setter
    def local(self, flag: float) -> None:
        """This rank's flag after a step: its vote starts at once."""
        self._local = flag
        total = torch.tensor([flag], dtype=torch.float64)
        self._pending = (dist.all_reduce(total, group=distributed._vote_group(), async_op=True), total)

    def step_done(self) -> int:
        pending, self._pending = self._pending, None
        if pending is None:
            return 0
        work, total = pending
        work.wait()
        return distributed._exit_code((total, None))

    def settle(self) -> int:
        return self.step_done()
