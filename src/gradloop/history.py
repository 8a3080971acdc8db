"""History: per-epoch logs, as a mapping from name to per-epoch values (Keras's `History`).

Keras's attributes too: `history.history` (name -> per-epoch list, what `pd.DataFrame(history.history)`
turns into one row per epoch), `history.params` (`verbose`, `epochs`, `steps`) and `history.epoch`
(the epoch indices, from 0)."""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping


class History(Mapping[str, list[float]]):
    """`history["val_loss"]` is one float per epoch; `history.epochs` is one dict per epoch.

    A name missing from some epoch (say, validation that ran only on some) reads as NaN there.
    `params` is what `fit` was given, as in Keras: `epochs` (max_epochs, counted over resumes),
    `steps` (batches per epoch, None for a loader without a length) and `verbose` (0: no progress
    display, 1: a live bar, 2: one line per epoch).
    """

    def __init__(self, epochs: list[dict[str, float]] | None = None, params: dict[str, Any] | None = None) -> None:
        self.epochs: list[dict[str, float]] = [dict(e) for e in epochs or []]
        self.params: dict[str, Any] = dict(params or {})

    @property
    def history(self) -> dict[str, list[float]]:
        """Keras's `history.history`: `{name: [one float per epoch]}`, a new dict at each read."""
        return {name: self[name] for name in self}

    @property
    def epoch(self) -> list[int]:
        """Keras's `history.epoch`: the index of every epoch held, from 0 (all of them after a resume)."""
        return list(range(len(self.epochs)))

    def append(self, logs: dict[str, float]) -> None:
        """Keeps `logs` itself, so keys that callbacks add in `on_epoch_end` are part of the history."""
        self.epochs.append(logs)

    def _names(self) -> list[str]:
        return list(dict.fromkeys(name for logs in self.epochs for name in logs))

    def __getitem__(self, name: str) -> list[float]:
        if not any(name in logs for logs in self.epochs):
            raise KeyError(f"{name!r} is not in the history; it has: {', '.join(self._names()) or 'nothing yet'}")
        return [logs.get(name, math.nan) for logs in self.epochs]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        last = self.epochs[-1] if self.epochs else {}
        return f"History(epochs={len(self.epochs)}, last={last})"

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(e) for e in self.epochs]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epochs = [dict(e) for e in state["epochs"]]
