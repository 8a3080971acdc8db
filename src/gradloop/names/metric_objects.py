"""torchmetrics `Metric` objects: recognised without importing torchmetrics, one fresh copy per pass.

torchmetrics keeps the epoch's state itself (`update` per batch, `compute` once per pass) and,
under torchrun, gathers it across ranks inside `compute()`: gradloop never all-reduces it. Only
the metric's own states (`metric_state`, what `add_state` registered) are saved at a resume point,
not the module's weights (a metric may hold a network, as FID does).
"""

from __future__ import annotations

import copy
import re
import sys
from typing import Any, Callable

import torch

# torchmetrics turns scores into probabilities batch by batch, only when a batch holds values outside
# [0, 1]: logits that happen to fall inside would be read as probabilities, and ranking metrics (AUROC)
# would mix two scales. The loss says what the outputs are, so they reach the metric as probabilities.
_PROBABILITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cross_entropy": lambda scores: scores.softmax(dim=1),
    "nll": torch.exp,  # log-probabilities
    "bce_with_logits": torch.sigmoid,
}


def is_torchmetric(obj: object) -> bool:
    """A `torchmetrics.Metric` instance; torchmetrics is only looked at when already imported."""
    torchmetrics = sys.modules.get("torchmetrics")
    return torchmetrics is not None and isinstance(obj, torchmetrics.Metric)


def is_collection(obj: object) -> bool:
    """A `torchmetrics.MetricCollection` (a dict of metrics, not one metric)."""
    torchmetrics = sys.modules.get("torchmetrics")
    return torchmetrics is not None and isinstance(obj, torchmetrics.MetricCollection)


def snake_name(obj: object) -> str:
    """`MulticlassF1Score` -> `multiclass_f1score`, `BinaryAUROC` -> `binary_auroc`, `CLIPScore` -> `clip_score`."""
    name = type(obj).__name__
    name = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return name.lower()


def fresh_copy(metric: Any, device: torch.device) -> Any:
    """A reset copy on `device`: the user's object is never updated, and each pass starts empty."""
    clone = copy.deepcopy(metric)
    clone.reset()
    return clone.to(device)


def update(metric: Any, outputs: torch.Tensor, targets: torch.Tensor, loss_name: str | None = None) -> None:
    """`metric.update(outputs, targets)`, the outputs as probabilities when the loss says they are logits
    (or log-probabilities); a (N, 1) score column meets (N,) targets as (N,); half-precision outputs
    (mixed precision) are read in float32."""
    if outputs.dtype in (torch.float16, torch.bfloat16):
        outputs = outputs.float()
    if loss_name in _PROBABILITIES and outputs.is_floating_point():
        outputs = _PROBABILITIES[loss_name](outputs)
    if outputs.shape != targets.shape and outputs.numel() == targets.numel():
        outputs = outputs.reshape(targets.shape)
    metric.update(outputs, targets)


def value(metric: Any, name: str) -> float:
    """`metric.compute()` as one float (under torchrun a collective: every rank calls it at once)."""
    result = metric.compute()
    if not isinstance(result, torch.Tensor) or result.numel() != 1:
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise ValueError(
            f"metric {name!r} ({type(metric).__name__}) computes {shape}, not one number: gradloop logs one "
            "float per metric; use an averaged form (e.g. average='macro') or one metric per class"
        )
    return float(result)


def state(metric: Any) -> dict[str, Any]:
    """A copy of the metric's states (tensors, or lists of tensors for concatenated ones) and its update count."""
    states = {key: [t.detach().clone() for t in v] if isinstance(v, list) else v.detach().clone() for key, v in metric.metric_state.items()}
    return {"states": states, "update_count": int(metric.update_count)}


def load_state(metric: Any, saved: dict[str, Any]) -> None:
    """Puts `state(...)` back, on the metric's device (as torchmetrics' own `_load_from_state_dict` does)."""
    device = metric.device
    for key, v in saved["states"].items():
        setattr(metric, key, [t.to(device) for t in v] if isinstance(v, list) else v.to(device))
    _lists_as_declared(metric)
    metric._update_count = int(saved["update_count"])
    metric._computed = None


def gather(metric: Any) -> None:
    """Replaces this rank's states with those of all ranks, reduced as the metric declares (sum, cat, ...):
    what `compute()` would see. torchmetrics' own `sync`; the local states are not kept."""
    metric.sync(should_sync=True)
    metric._is_synced = False  # the gathered state is now the state: further updates or syncs may follow
    metric._cache = None
    _lists_as_declared(metric)


def _lists_as_declared(metric: Any) -> None:
    """A concatenated state comes back from a sync as one tensor; `update` and `reset` want the list it was declared as."""
    for key, default in metric._defaults.items():
        current = getattr(metric, key)
        if isinstance(default, list) and isinstance(current, torch.Tensor):
            setattr(metric, key, [current])
