"""torchrun support: detection, process group, DDP wrapping, all-reduce, rank-zero-only.

One process (no RANK/WORLD_SIZE in the environment, or WORLD_SIZE=1) never touches
torch.distributed. Under `torchrun` (WORLD_SIZE > 1) the Trainer joins the process group through
torchrun's env:// rendezvous (NCCL on CUDA, Gloo otherwise), wraps the model in
DistributedDataParallel for the training forward, shards the data it batches itself, all-reduces
the metric sums once per pass, and leaves every file and every printed line to rank 0.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

EXIT_BARRIER_TIMEOUT = datetime.timedelta(seconds=30)
_VOTES: Any = None  # the Gloo group for stop votes, made with the process group


def world() -> tuple[int, int, int]:
    """`(rank, world_size, local_rank)`: from the process group once joined, else from the environment."""
    if _group_ready():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0) or 0)
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 0, 1, 0
    if world_size <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0") or 0), world_size, int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_distributed() -> bool:
    """True when this process is one of several (launched by torchrun or a like launcher)."""
    return world()[1] > 1


def is_rank_zero() -> bool:
    return world()[0] == 0


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    """A process group of more than one rank is initialized: collectives are live."""
    return _group_ready() and dist.get_world_size() > 1


def device_for_rank(requested: object, resolved: torch.device) -> torch.device:
    """Under torchrun, 'auto' on a CUDA machine (and a bare 'cuda') means cuda:LOCAL_RANK."""
    if not is_distributed() or resolved.type != "cuda":
        return resolved
    bare = (
        requested is None
        or requested in ("auto", "cuda")
        or (isinstance(requested, torch.device) and requested.type == "cuda" and requested.index is None)
    )
    return torch.device("cuda", world()[2]) if bare else resolved


def init_if_needed(device: torch.device) -> None:
    """Joins torchrun's process group (env:// rendezvous) when WORLD_SIZE > 1 and not joined yet."""
    if not is_distributed() or _group_ready():
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed: run a single process")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    # The group lives as long as the process, so validate/predict after fit still work; left to the
    # interpreter's own teardown, Gloo's threads abort the process at exit (SIGABRT).
    atexit.register(_destroy_group)


def vote_max(value: int) -> tuple[Any, torch.Tensor]:
    """Starts a non-blocking MAX all-reduce of `value` over the CPU side channel: `(work, result)`;
    `work.wait()`, then read `result`."""
    flag = torch.tensor([value], dtype=torch.int64)
    return dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_vote_group(), async_op=True), flag


def _vote_group() -> Any:
    """A Gloo group beside the training one: a CPU side channel (no device sync, even on NCCL), made
    at the first use, which every rank reaches at the same point."""
    global _VOTES
    if _VOTES is None:
        _VOTES = dist.new_group(backend="gloo")
    return _VOTES


def _destroy_group() -> None:
    """Tears down the process group gradloop created: at exit, normal or by SystemExit or an error.

    The ranks meet first (a rank that tears down while a peer still talks to it aborts too); a peer
    that is gone or stuck costs at most `EXIT_BARRIER_TIMEOUT` before the teardown goes on alone.
    """
    if not _group_ready():
        return
    with contextlib.suppress(RuntimeError):
        dist.barrier(async_op=True).wait(timeout=EXIT_BARRIER_TIMEOUT)
    dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, channel: StopChannel | None = None) -> nn.Module:
    """The module the training forward runs through: DDP under torchrun (its gradient all-reduce
    also carrying `channel`'s stop flags), the model itself otherwise."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        wrapped = DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    else:
        wrapped = DistributedDataParallel(model)
    if channel is not None:
        wrapped.register_comm_hook(None, channel.hook)
    return wrapped


class StopChannel:
    """Each rank's stop flag, summed over ranks inside DDP's gradient all-reduce of every step.

    The hook is DDP's default (divide by the world size, then all-reduce), except that the last
    bucket of a step travels with one more element: this rank's flag (0, or 1 for SIGTERM and
    4096 for SIGINT). The sum is read a step later (`step_done`), when it has long arrived on the
    host: the vote costs no collective of its own and no host-device sync.
    """

    SIGTERM, SIGINT = 1, 4096

    def __init__(self) -> None:
        self.local = 0.0
        self._arrived: tuple[torch.Tensor, Any] | None = None  # this step's sum: (host tensor, CUDA event or None)
        self._previous: tuple[torch.Tensor, Any] | None = None  # the step before's

    def hook(self, _state, bucket):  # DDP checks the annotations: none, or torch's own
        buffer = bucket.buffer().div_(dist.get_world_size())
        if not bucket.is_last():
            return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])
        packed = torch.cat([buffer, buffer.new_full((1,), self.local)])

        def unpack(fut: Any) -> torch.Tensor:
            total = fut.value()[0]
            if total.is_cuda:  # copied to the host behind the step's work, read once it has arrived
                host = torch.empty(1, dtype=total.dtype, pin_memory=True)
                host.copy_(total[-1:], non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._arrived = (host, event)
            else:
                self._arrived = (total[-1:].clone(), None)
            return total[:-1]

        return dist.all_reduce(packed, async_op=True).get_future().then(unpack)

    def step_done(self) -> int:
        """After an optimizer step: the agreed exit code (143, 130, or 0) of the step before."""
        previous, self._previous, self._arrived = self._previous, self._arrived, None
        return _exit_code(previous)

    def settle(self) -> int:
        """Both sums not read yet (at an epoch's end, where waiting is fine), then none."""
        code = max(_exit_code(self._previous), _exit_code(self._arrived))
        self._previous = self._arrived = None
        return code


def _exit_code(flags: tuple[torch.Tensor, Any] | None) -> int:
    if flags is None:
        return 0
    host, event = flags
    if event is not None:
        event.synchronize()  # a step old: long complete
    total = int(host.item())
    return 143 if total % StopChannel.SIGINT else 130 if total else 0  # SIGTERM first, as the epoch-end vote (MAX)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise sum over ranks (a new tensor on `tensor`'s device); `tensor` itself when alone."""
    if not active():
        return tensor
    work = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def broadcast_(tensor: torch.Tensor) -> None:
    """Overwrites `tensor` in place with rank 0's; nothing when alone."""
    if not active():
        return
    work = tensor.detach().to(_collective_device(), copy=True)
    dist.broadcast(work, src=0)
    tensor.detach().copy_(work)


def barrier() -> None:
    """Waits for every rank (over the CPU side channel); nothing when alone."""
    if active():
        dist.barrier(group=_vote_group())


def broadcast_int(value: int) -> int:
    """Rank 0's `value` on every rank; `value` when alone."""
    holder = torch.tensor([value], dtype=torch.int64)
    broadcast_(holder)
    return int(holder.item())


def shard_size(num_samples: int, rank: int, world_size: int, pad: bool) -> int:
    """Samples of one rank's shard: padded shards are equal (ceil), unpadded ones strided."""
    if world_size <= 1:
        return num_samples
    if pad:
        return -(-num_samples // world_size)
    return len(range(rank, num_samples, world_size))


def shard_index(index: torch.Tensor, rank: int, world_size: int, pad: bool) -> torch.Tensor:
    """This rank's part of an epoch's order, as DistributedSampler takes it: padded by repeating the
    order's start to a multiple of `world_size` (training), then every `world_size`-th from `rank`."""
    if world_size <= 1:
        return index
    if pad:
        total = -(-index.numel() // world_size) * world_size
        if total > index.numel():
            index = index.repeat(-(-total // index.numel()))[:total]
    return index[rank::world_size]


def unsharded_loader_warning(loader: Any) -> str | None:
    """Under torchrun, a user's DataLoader without a DistributedSampler gives every rank all the data:
    the warning that names the fix (None when it is sharded, or when there is one process)."""
    if not is_distributed():
        return None
    from torch.utils.data import DistributedSampler

    batch_sampler = getattr(loader, "batch_sampler", None)
    samplers = (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None), batch_sampler)
    if any(isinstance(sampler, DistributedSampler) for sampler in samplers):
        return None
    return (
        "gradloop: under torchrun every rank reads the whole of this DataLoader (it has no DistributedSampler), so each "
        "epoch trains on the data world_size times: build it with DataLoader(dataset, sampler=DistributedSampler(dataset), ...) "
        "or pass the Dataset itself and gradloop shards it"
    )
