"""Where two runs part: their batch-by-batch records, and their final training states, compared bit for bit."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from ..util import is_number
from .recording import Fingerprint, Record, fingerprint
from .report import Difference

AT_END = "the end of training"
_KINDS = {"input": "data", "rng": "rng at a batch", "output": "outputs", "loss": "loss"}  # in the order reported


def first_divergence(reference: Sequence[Record], other: Sequence[Record]) -> list[Difference]:
    """The differing tensors of the first event (forward call or batch loss) at which the runs part,
    events matched by epoch, batch and call; an event one run has and the other lacks is a difference too."""
    others = {r.key: r for r in other}
    for record in reference:
        match = others.pop(record.key, None)
        if match is None:
            return [Difference("data", "a batch", record.where, detail="the resumed run never trained on it: it skipped batches")]
        found = _differing(record.values, match.values, match.where)
        if found:
            return sorted(found, key=lambda d: list(_KINDS.values()).index(d.kind))
    if others:
        extra = next(iter(others.values()))
        more = "the uninterrupted run has no such batch: the resumed run trained on more"
        return [Difference("data", "a batch", extra.where, detail=more)]
    return []


def _differing(a: Mapping[str, Fingerprint], b: Mapping[str, Fingerprint], where: str) -> list[Difference]:
    """The values that differ between two records of the same event, each as a Difference at `where`."""
    found = []
    for name in dict.fromkeys([*a, *b]):
        kind = _KINDS[name.split("[")[0]]
        named = f"the {name[5:-2]} RNG state" if name.startswith("rng[") else name
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            found.append(Difference(kind, named, where, detail="present in one run only"))
        elif x != y:
            shapes = f"shape {x.shape} vs {y.shape}" if x.shape != y.shape else ""
            size = tensor_diff(x.copy, y.copy) if x.copy is not None and y.copy is not None else None
            found.append(Difference(kind, named, where, size, shapes))
    return found


def tensor_diff(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """max |a - b| (NaN where only one is NaN counts as inf); None for shapes or dtypes that do not compare."""
    if a.shape != b.shape or a.numel() == 0 or a.dtype.is_complex or a.dtype == torch.bool or b.dtype == torch.bool:
        return None
    x, y = a.detach().cpu().double(), b.detach().cpu().double()
    gap = (x - y).abs()
    gap = torch.where(torch.isnan(x) & torch.isnan(y), torch.zeros_like(gap), gap)
    return float(torch.nan_to_num(gap, nan=math.inf).max())


# ------------------------------------------------------------------------------------- final states
def state_differences(a: dict[str, Any], b: dict[str, Any], param_names: list[str]) -> list[Difference]:
    """Differences between two `Trainer.state_dict()`s, part by part (weights first), each value named:
    weights by parameter name, optimizer state by the parameter it belongs to, RNG by generator,
    history by epoch and name (wall-clock `time` left out)."""
    found: list[Difference] = []
    found += leaf_differences("weights", a["model"], b["model"], "")
    found += _optimizer(a["optimizer"], b["optimizer"], param_names)
    found += leaf_differences("optimizer", a["scaler"], b["scaler"], "grad scaler")
    for generator in dict.fromkeys([*a["rng"], *b["rng"]]):
        if not _same(a["rng"].get(generator), b["rng"].get(generator)):
            found.append(Difference("rng", f"the {generator} RNG state", AT_END))
    found += leaf_differences("progress", a["progress"], b["progress"], "trainer.state")
    found += _history(a["history"]["epochs"], b["history"]["epochs"])
    found += leaf_differences("callbacks", a["callbacks"], b["callbacks"], "callback state ")
    found += leaf_differences("state", a["resume_point"], b["resume_point"], "resume point")
    return found


def _optimizer(a: dict[str, Any], b: dict[str, Any], param_names: list[str]) -> list[Difference]:
    def named(index: Any) -> str:
        return param_names[index] if isinstance(index, int) and index < len(param_names) else f"parameter {index}"

    found = []
    for index in dict.fromkeys([*a["state"], *b["state"]]):
        found += leaf_differences("optimizer", a["state"].get(index), b["state"].get(index), f"optimizer state of {named(index)}")
    for i, (ga, gb) in enumerate(zip(a["param_groups"], b["param_groups"])):
        found += leaf_differences("optimizer", ga, gb, f"optimizer param_groups[{i}]")
    return found


def _history(a: list[dict[str, float]], b: list[dict[str, float]]) -> list[Difference]:
    if len(a) != len(b):
        return [Difference("history", "the number of epochs", AT_END, detail=f"{len(a)} vs {len(b)}")]
    found = []
    for epoch, (ea, eb) in enumerate(zip(a, b)):
        for name in dict.fromkeys([*ea, *eb]):
            if name != "time" and not _same(ea.get(name), eb.get(name)):
                found.append(Difference("history", f"history[{name!r}][{epoch}]", AT_END, _number_diff(ea.get(name), eb.get(name))))
    return found


def leaf_differences(kind: str, a: Any, b: Any, path: str, where: str = AT_END) -> list[Difference]:
    """One Difference per differing leaf (tensor, number, other value), named by its path."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        found = []
        for key in dict.fromkeys([*a, *b]):
            sub = f"{path}[{key!r}]" if path else str(key)
            if key not in a or key not in b:
                found.append(Difference(kind, sub, where, detail="present in one run only"))
            else:
                found += leaf_differences(kind, a[key], b[key], sub, where)
        return found
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in leaf_differences(kind, x, y, f"{path}[{i}]", where)]
    if _same(a, b):
        return []
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [Difference(kind, path, where, tensor_diff(a, b))]
    return [Difference(kind, path, where, _number_diff(a, b), detail=f"{_short(a)} vs {_short(b)}")]


def _same(a: Any, b: Any) -> bool:
    """Bit-identical: tensors by bytes, floats with NaN equal to NaN, containers element by element."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return fingerprint(a, keep=False) == fingerprint(b, keep=False)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and bool(a == b)


def _number_diff(a: Any, b: Any) -> float | None:
    if is_number(a) and is_number(b):
        return abs(float(a) - float(b)) if not (math.isnan(a) or math.isnan(b)) else math.inf
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
