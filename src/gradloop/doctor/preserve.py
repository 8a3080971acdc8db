"""Leave no trace: snapshots of a model's tensors, flags and modes (the RNGs: `util.preserved_rng`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelSnapshot:
    """Copies of every parameter, buffer and gradient, each `requires_grad` flag and each module's mode.

    Parameters and buffers are restored in place (`copy_`), so optimizers and other references to
    them stay valid. Costs one copy of the model's tensors.
    """

    tensors: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]
    requires_grad: dict[str, bool]
    modes: list[bool]

    @classmethod
    def capture(cls, model: nn.Module) -> "ModelSnapshot":
        with torch.no_grad():  # lazy modules' parameters have no values yet: nothing to keep
            params = [(n, p) for n, p in model.named_parameters() if not is_lazy(p)]
            tensors = {f"p:{n}": p.detach().clone() for n, p in params}
            tensors.update({f"b:{n}": b.detach().clone() for n, b in model.named_buffers() if not is_lazy(b)})
            grads = {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in params}
        return cls(tensors, grads, {n: p.requires_grad for n, p in params}, [m.training for m in model.modules()])

    def restore(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if f"p:{name}" not in self.tensors:
                    continue
                param.copy_(self.tensors[f"p:{name}"])
                param.requires_grad_(self.requires_grad[name])
                saved = self.grads[name]
                param.grad = saved.clone() if saved is not None else None
            for name, buffer in model.named_buffers():
                if f"b:{name}" in self.tensors:
                    buffer.copy_(self.tensors[f"b:{name}"])
        for module, training in zip(model.modules(), self.modes):
            module.training = training


def is_lazy(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, nn.parameter.UninitializedTensorMixin)
