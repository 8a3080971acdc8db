"""The doctor's findings: one `Check` per test, gathered in a `DoctorReport`."""

from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from ..util import atomic_write

if TYPE_CHECKING:
    import torch

    from .range_test import LRFindResult

Status = Literal["pass", "warn", "fail"]
STATUSES = ("pass", "warn", "fail")
_WIDTH = 100  # characters per printed line; evidence wraps below its check
_SHOWN = 6  # items listed in one line of evidence


class Skip(Exception):
    """Raised by a check that does not apply (no validation data, a regression task, ...)."""


@dataclass(frozen=True)
class Check:
    """One finding: `message` is the evidence (what was measured), `advice` what to do about it."""

    name: str
    status: Status
    message: str
    advice: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; received: status={self.status!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class DoctorReport:
    """All checks in the order they ran, the ones that did not apply, and the LR range test."""

    checks: list[Check]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (check name, why it did not apply)
    lr_find: LRFindResult | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per check, skipped ones included

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return not self.failed

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def __getitem__(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        ran = ", ".join(c.name for c in self.checks)
        raise KeyError(f"no check named {name!r} in this report; it has: {ran}")

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.checks)

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        verdict = "OK" if self.ok else "PROBLEMS FOUND"
        return (
            f"gradloop doctor: {verdict} - {counts['fail']} failed, {counts['warn']} warnings, "
            f"{counts['pass']} passed ({self.seconds:.1f} s)"
        )

    def __str__(self) -> str:
        """A plain aligned table: status, check name, then evidence and (for non-passing checks) advice."""
        name_width = max([len(c.name) for c in self.checks] + [5])
        indent = " " * (6 + name_width + 2)
        lines = [self.summary(), ""]
        for check in self.checks:
            head = f"{check.status.upper():<6}{check.name:<{name_width}}  "
            lines += textwrap.wrap(check.message, _WIDTH, initial_indent=head, subsequent_indent=indent) or [head]
            if check.advice and check.status != "pass":
                lines += textwrap.wrap("-> " + check.advice, _WIDTH, initial_indent=indent, subsequent_indent=indent + "   ")
        for name, reason in self.skipped:
            lines.append(f"{'-':<6}{name:<{name_width}}  not run: {reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "checks": [c.to_dict() for c in self.checks],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "lr_find": self.lr_find.to_dict() if self.lr_find is not None else None,
            "timings": {name: round(t, 4) for name, t in self.timings.items()},
        }

    def to_json(self) -> str:
        return json.dumps(_finite(self.to_dict()), indent=2)

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Writes `doctor.json` (and `lr_find.png` when the range test ran) into `run_dir`."""
        path = atomic_write(Path(run_dir) / "doctor.json", self.to_json() + "\n", durable=False)  # never half a report
        if self.lr_find is not None and self.lr_find.lrs:
            self.lr_find.plot(path.parent / "lr_find.png")
        return path


def _finite(value: Any) -> Any:
    """NaN and Inf become None, so doctor.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ------------------------------------------------------------------ evidence, written the same way by every check
def listed(values: Sequence[Any]) -> str:
    """The first few values, and how many there are in all when some are left out."""
    shown = ", ".join(str(v) for v in values[:_SHOWN])
    return shown + (f", ... ({len(values)} in all)" if len(values) > _SHOWN else "")


def dtype_of(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")
