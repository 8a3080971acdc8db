"""Where two runs part: their batch-by-batch records, and their final training states, compared bit for bit."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

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
        found = [
            Difference(_KINDS[name.split("[")[0]], _named(name), match.where, max_abs_diff(a, b) if a and b else None, detail)
            for name, a, b, detail in _differing(record.values, match.values)
        ]
        if found:
            return sorted(found, key=lambda d: list(_KINDS.values()).index(d.kind))
    if others:
        extra = next(iter(others.values()))
        more = "the uninterrupted run has no such batch: the resumed run trained on more"
        return [Difference("data", "a batch", extra.where, detail=more)]
    return []


def _named(name: str) -> str:
    return f"the {name[5:-2]} RNG state" if name.startswith("rng[") else name


def _differing(a: Mapping[str, Fingerprint], b: Mapping[str, Fingerprint]) -> list[tuple[str, Fingerprint | None, Fingerprint | None, str]]:
    found: list[tuple[str, Fingerprint | None, Fingerprint | None, str]] = []
    for name in dict.fromkeys([*a, *b]):
        if name not in a or name not in b:
            found.append((name, None, None, "present in one run only"))
        elif not a[name].same_as(b[name]):
            shapes = f"shape {a[name].shape} vs {b[name].shape}" if a[name].shape != b[name].shape else ""
            found.append((name, a[name], b[name], shapes))
    return found


def max_abs_diff(a: Fingerprint, b: Fingerprint) -> float | None:
    if a.copy is None or b.copy is None:
        return None
    return tensor_diff(a.copy, b.copy)


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
    found += _leaves("weights", a["model"], b["model"], "")
    found += _optimizer(a["optimizer"], b["optimizer"], param_names)
    found += _leaves("optimizer", a["scaler"], b["scaler"], "grad scaler")
    for generator in dict.fromkeys([*a["rng"], *b["rng"]]):
        if not _same(a["rng"].get(generator), b["rng"].get(generator)):
            found.append(Difference("rng", f"the {generator} RNG state", AT_END))
    found += _leaves("progress", a["progress"], b["progress"], "trainer.state")
    found += _history(a["history"]["epochs"], b["history"]["epochs"])
    found += _leaves("callbacks", a["callbacks"], b["callbacks"], "callback state ")
    found += _leaves("state", a["resume_point"], b["resume_point"], "resume point")
    return found


def _optimizer(a: dict[str, Any], b: dict[str, Any], param_names: list[str]) -> list[Difference]:
    def named(index: Any) -> str:
        return param_names[index] if isinstance(index, int) and index < len(param_names) else f"parameter {index}"

    found = []
    for index in dict.fromkeys([*a["state"], *b["state"]]):
        found += _leaves("optimizer", a["state"].get(index), b["state"].get(index), f"optimizer state of {named(index)}")
    for i, (ga, gb) in enumerate(zip(a["param_groups"], b["param_groups"])):
        found += _leaves("optimizer", ga, gb, f"optimizer param_groups[{i}]")
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


def _leaves(kind: str, a: Any, b: Any, path: str) -> list[Difference]:
    """One Difference per differing leaf (tensor, number, other value), named by its path."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        found = []
        for key in dict.fromkeys([*a, *b]):
            sub = f"{path}[{key!r}]" if path else str(key)
            if key not in a or key not in b:
                found.append(Difference(kind, sub, AT_END, detail="present in one run only"))
            else:
                found += _leaves(kind, a[key], b[key], sub)
        return found
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _leaves(kind, x, y, f"{path}[{i}]")]
    if _same(a, b):
        return []
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [Difference(kind, path, AT_END, tensor_diff(a, b))]
    return [Difference(kind, path, AT_END, _number_diff(a, b), detail=f"{_short(a)} vs {_short(b)}")]


def _same(a: Any, b: Any) -> bool:
    """Bit-identical: tensors by bytes, floats with NaN equal to NaN, containers element by element."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return fingerprint(a, keep=False).same_as(fingerprint(b, keep=False))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and bool(a == b)


def _number_diff(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b)) if not (math.isnan(a) or math.isnan(b)) else math.inf
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
