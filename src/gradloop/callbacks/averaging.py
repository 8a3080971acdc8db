"""Weight averaging with torch's own `torch.optim.swa_utils`: EMA per optimizer step, SWA per epoch."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, update_bn

from ..data import distributed
from ..util import check_count, is_number
from .base import Callback
from .lr import LRScheduler

if TYPE_CHECKING:
    from ..trainer import Trainer


class EMA(Callback):
    """An exponential moving average of the weights, updated after every `every_n_steps` optimizer steps.

    torch's `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)`: the
    first update copies the weights, each later one does `ema = decay * ema + (1 - decay) * w`, for
    the parameters and the buffers alike (BatchNorm running statistics are averaged too, so the
    average needs no pass over the data). Steps are counted by `trainer.state.global_step`.

    With `evaluate=True` (once the first update is made) fit's validations, at the epoch's end and
    with `val_every_n_steps`, run the averaged weights, and when fit ends the model is given them,
    so `model.safetensors`, `validate`, `test` and `predict` afterwards use the average. Training
    itself always goes on with the raw weights, and checkpoints hold those and the average (this
    callback's state), so a resume continues exactly. With `evaluate=False` the average is only
    kept: `ema.module` is a plain copy of the model holding it.

    Under torchrun every rank averages its identical weights alike; buffers, which DDP syncs from rank 0
    only at the next forward, are rank 0's average wherever the average is used. An update costs a few
    foreach kernels and no host sync; the average takes one more copy of the weights on the model's device.
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, evaluate: bool = True) -> None:
        if not is_number(decay) or not 0 < decay < 1:
            raise ValueError(f"decay must be a number in (0, 1), e.g. 0.999; received: decay={decay!r}")
        check_count("every_n_steps", every_n_steps)
        if not isinstance(evaluate, bool):
            raise TypeError(f"evaluate must be True or False; received: evaluate={evaluate!r}")
        self.decay, self.every_n_steps, self.evaluate = float(decay), every_n_steps, evaluate
        self.averaged: AveragedModel | None = None
        self._updates = 0  # n_averaged, known on the host

    @property
    def module(self) -> nn.Module | None:
        """A copy of the model holding the average (None before the first fit)."""
        return self.averaged.module if self.averaged is not None else None

    def listens(self, hook: str) -> bool:
        return self.evaluate if hook in ("evaluation_model", "final_weights") else super().listens(hook)

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.averaged = AveragedModel(trainer.model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        self._updates = 0

    def on_optimizer_step(self, trainer: "Trainer") -> None:
        if trainer.state.global_step % self.every_n_steps:
            return
        assert self.averaged is not None
        if self._updates == 0:
            self.averaged.update_parameters(trainer.model)  # torch's first update: a copy
        else:
            _average_in(self.averaged, trainer.model)
        self._updates += 1

    def evaluation_model(self, trainer: "Trainer") -> nn.Module | None:
        if not self._updates:
            return None
        assert self.averaged is not None
        # Under DDP each rank's BatchNorm statistics take its own last batch (rank 0's are broadcast at the
        # next forward): the average of rank 0's, the one its checkpoints hold, is every rank's.
        for buffer in self.averaged.module.buffers():
            distributed.broadcast_(buffer)
        return self.averaged.module

    def final_weights(self, trainer: "Trainer") -> dict[str, torch.Tensor] | None:
        module = self.evaluation_model(trainer)
        return module.state_dict() if module is not None else None

    def state_dict(self) -> dict[str, Any]:
        """The average and its count (the live tensors: save them at once)."""
        return {"averaged": self.averaged.state_dict() if self.averaged is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # On resume the trainer calls this after on_fit_start has built the average; before any fit there
        # is nothing to load into, and the next fit starts over anyway.
        if self.averaged is not None and state.get("averaged") is not None:
            self.averaged.load_state_dict(state["averaged"])
            self._updates = int(self.averaged.n_averaged)


def _average_in(averaged: AveragedModel, model: nn.Module) -> None:
    """`averaged.update_parameters(model)` once `n_averaged > 0`, with `use_buffers=True`, without its host
    sync (torch copies `n_averaged` to the device at every call): the same `multi_avg_fn` on the same
    tensors, grouped by device and dtype as torch groups them."""
    assert averaged.multi_avg_fn is not None
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    mine = itertools.chain(averaged.module.parameters(), averaged.module.buffers())
    theirs = itertools.chain(model.parameters(), model.buffers())
    for average, current in zip(mine, theirs):
        averages, currents = groups.setdefault((average.device, average.dtype), ([], []))
        averages.append(average.detach())
        currents.append(current.detach())
    for averages, currents in groups.values():
        averaged.multi_avg_fn(averages, currents, averaged.n_averaged)
    averaged.n_averaged += 1  # on the CPU (AveragedModel's default): no sync


class SWA(Callback):
    """Stochastic Weight Averaging: torch's `AveragedModel`, `SWALR` and `update_bn`, as torch's recipe.

    From epoch `start_epoch` (counted from 0) the LR follows `SWALR(optimizer, swa_lr, anneal_epochs,
    anneal_strategy)`, stepped at each epoch's end: epoch `start_epoch` runs at the LR it had, the
    next `anneal_epochs` epochs anneal it to `swa_lr` (at once with `anneal_epochs=0`). At the end of
    epochs `start_epoch`, `start_epoch + 1`, ... the weights join an equal average. When fit ends,
    `update_bn` recomputes the average's BatchNorm statistics in one pass over the training data
    (with the trainer's step, in the data's order; not done for a model without BatchNorm; under
    torchrun each rank passes its shard and the statistics are averaged over ranks), and the model
    is given the averaged weights: the trained `nn.Module`, `model.safetensors` and any later
    `validate`/`predict` hold the SWA weights. Validations during fit run the raw weights, and
    checkpoints hold them, the average and the scheduler, so a resume continues exactly.

    SWA sets the LR from `start_epoch` on: an `LRScheduler` or `ReduceLROnPlateau` callback would
    fight it and is an error (a callback of yours that sets the LR is your business). It cannot be
    combined with EMA(evaluate=True) or restore_best_weights, which supply the final weights too.
    """

    def __init__(self, swa_lr: float | list[float], start_epoch: int, anneal_epochs: int = 10, anneal_strategy: str = "cos") -> None:
        lrs = swa_lr if isinstance(swa_lr, (list, tuple)) else [swa_lr]
        if not lrs or any(not is_number(v) or not v >= 0 for v in lrs):
            raise ValueError(f"swa_lr must be a number >= 0 (or one per param group); received: swa_lr={swa_lr!r}")
        check_count("start_epoch", start_epoch, minimum=0)
        check_count("anneal_epochs", anneal_epochs, minimum=0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear'; received: anneal_strategy={anneal_strategy!r}")
        self.swa_lr, self.start_epoch = swa_lr, start_epoch
        self.anneal_epochs, self.anneal_strategy = anneal_epochs, anneal_strategy
        self.averaged: AveragedModel | None = None
        self.scheduler: SWALR | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    @property
    def module(self) -> nn.Module | None:
        """A copy of the model holding the average (None before the first fit)."""
        return self.averaged.module if self.averaged is not None else None

    def on_fit_start(self, trainer: "Trainer") -> None:
        fighting = [type(c).__name__ for c in trainer.callbacks if isinstance(c, LRScheduler)]  # ReduceLROnPlateau too
        if fighting:
            raise ValueError(f"SWA sets the LR from start_epoch on (SWALR) and {fighting[0]} would change it too: use one of them")
        if self.start_epoch >= trainer.max_epochs:
            raise ValueError(
                f"SWA(start_epoch={self.start_epoch}) never starts: training runs epochs 0..{trainer.max_epochs - 1} "
                f"(max_epochs={trainer.max_epochs}); choose a start_epoch below max_epochs"
            )
        self.averaged = AveragedModel(trainer.model)
        self._optimizer, self.scheduler = trainer.optimizer, None

    def on_epoch_start(self, trainer: "Trainer") -> None:
        if trainer.state.epoch >= self.start_epoch and self.scheduler is None:
            self.scheduler = self._new_scheduler()

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if trainer.state.epoch < self.start_epoch:
            return
        assert self.averaged is not None and self.scheduler is not None
        self.averaged.update_parameters(trainer.model)  # once per epoch: its host sync does not matter
        self.scheduler.step()

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.averaged is None or not self.averaged.n_averaged:  # a CPU tensor (AveragedModel's default)
            return
        module = self.averaged.module
        update_bn(([batch] for batch in trainer.training_batches()), _Step(module, trainer))
        _average_norm_statistics_over_ranks(module)

    def final_weights(self, trainer: "Trainer") -> dict[str, torch.Tensor] | None:
        return self.averaged.module.state_dict() if self.averaged is not None and self.averaged.n_averaged else None

    def _new_scheduler(self) -> SWALR:
        assert self._optimizer is not None
        return SWALR(self._optimizer, self.swa_lr, self.anneal_epochs, self.anneal_strategy)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        """The average, its count and the SWALR state (the live tensors: save them at once)."""
        return {
            "averaged": self.averaged.state_dict() if self.averaged is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # After on_fit_start on resume; before any fit there is nothing to load into (the next fit starts over).
        if self.averaged is None:
            return
        if state.get("averaged") is not None:
            self.averaged.load_state_dict(state["averaged"])
        if state.get("scheduler") is not None:  # the trainer puts the optimizer's saved LRs back afterwards
            self.scheduler = self.scheduler or self._new_scheduler()
            self.scheduler.load_state_dict(state["scheduler"])


class _Step(nn.Module):
    """What `update_bn` calls: it passes each item's first element, here the whole batch, to the trainer's step."""

    def __init__(self, module: nn.Module, trainer: "Trainer") -> None:
        super().__init__()
        self.module = module
        self._run = trainer.run_step

    def forward(self, batch: Any) -> torch.Tensor:
        return self._run(self.module, batch)


def _average_norm_statistics_over_ranks(module: nn.Module) -> None:
    """Under torchrun: each rank's update_bn saw its shard (equal batch counts); the mean over ranks
    is the statistic over all batches, and every rank ends with the same weights."""
    if not distributed.active():
        return
    world_size = distributed.world()[1]
    for layer in module.modules():
        if isinstance(layer, _BatchNorm) and layer.running_mean is not None and layer.running_var is not None:
            layer.running_mean.copy_(distributed.all_reduce_sum(layer.running_mean) / world_size)
            layer.running_var.copy_(distributed.all_reduce_sum(layer.running_var) / world_size)
