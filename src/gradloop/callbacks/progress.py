"""Progress display: a live rich bar on a terminal or in a Jupyter notebook, one plain line per epoch everywhere else."""

from __future__ import annotations

import atexit
import sys
import time
from typing import TYPE_CHECKING, Any, Iterable, TextIO

import torch

from ..data.devices import host_sync_allowed
from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer


def format_logs(logs: dict[str, float]) -> str:
    """`loss 0.1234  accuracy 0.9500  lr 0.001  1.2s`: the epoch's logs on one line."""
    return "  ".join(_format_value(name, value) for name, value in logs.items())


def _format_value(name: str, value: float) -> str:
    if name == "time":
        return f"{value:.1f}s"
    return f"lr {value:.3g}" if name == "lr" else f"{name} {value:.4f}"


def _in_notebook() -> bool:
    """A Jupyter kernel, as rich decides it (`Console.is_jupyter`); rich is imported only under IPython."""
    if "IPython" not in sys.modules:
        return False
    from rich import get_console

    return get_console().is_jupyter


def verbosity(callbacks: Iterable[Callback]) -> int:
    """Keras's `verbose` for these callbacks: 0 no progress display, 1 a live bar, 2 one line per epoch."""
    bars = [c for c in callbacks if isinstance(c, ProgressBar)]
    return 0 if not bars else 1 if any(bar.live for bar in bars) else 2


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar(Callback):
    """Shows training progress: `epoch E/N  loss ...  val_loss ...  lr ...  1.2s` once per epoch.

    When the output is a terminal (decided at construction, or forced with `live=True/False`) a
    live bar also runs during each epoch: epoch E/N, batch/total, running loss, it/s and ETA.
    In a Jupyter notebook (printing to its stdout) the same bar is one rich display per fit,
    updated in place (IPython's `display(..., display_id=True)`) and left showing the last epoch,
    above the epoch lines. Anywhere else (CI logs, pipes, pytest's capture) only the one line per
    epoch is printed, and the per-batch hook is not even installed, so the loop skips it entirely.

    Cost of the live bar: a counter and a clock read per batch; at most `refresh_per_second`
    times per second it reads that batch's loss (`float(loss)`, a host sync that waits for the
    device to finish the step) and redraws. The running loss is the mean of those sampled batch
    losses over the epoch so far; the epoch line printed at the end has the exact values.
    """

    priority = 10
    rank_zero_only = True  # under torchrun: rank 0 alone writes and prints

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, refresh_per_second: float = 10.0) -> None:
        if not refresh_per_second > 0:
            raise ValueError(f"refresh_per_second must be positive; received: refresh_per_second={refresh_per_second!r}")
        self.stream = stream
        self.notebook = (stream is None or stream is sys.stdout) and _in_notebook()
        self.live = (self.notebook or _is_terminal(stream or sys.stdout)) if live is None else bool(live)
        self.refresh_interval = 1.0 / refresh_per_second
        self._progress: Any = None
        self._display: Any = None  # the notebook's display handle, one per fit

    def listens(self, hook: str) -> bool:  # plain lines cost nothing per batch: the loop skips the call
        return self.live if hook == "on_train_batch_end" else super().listens(hook)

    # ------------------------------------------------------------------ the epoch line (always)
    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        if self._display is not None and self._progress is not None:  # the notebook's bar stays, complete
            self._redraw(time.perf_counter())
        self._stop_live()
        print(f"{_epoch_label(trainer)}  {format_logs(logs)}", file=self.stream or sys.stdout, flush=True)

    def on_fit_start(self, trainer: "Trainer") -> None:
        self._display = None  # a new fit gets its own display, never the one of an earlier cell

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._stop_live()

    # ------------------------------------------------------------------ the live bar (terminal)
    def on_epoch_start(self, trainer: "Trainer") -> None:
        if not self.live:
            return
        self._stop_live()  # a bar left over by a fit that raised
        self._progress = _new_progress(None if self.notebook else self.stream or sys.stdout)
        self._total = getattr(trainer, "batches_per_epoch", None)
        self._batches = self._start_batches = trainer.state.batch_in_epoch  # not 0 when resuming mid-epoch
        self._loss_sum, self._loss_count = 0.0, 0
        self._started = time.perf_counter()
        self._next_refresh = 0.0  # draw at the first batch
        self._task = self._progress.add_task(_epoch_label(trainer), total=self._total, completed=self._batches, info=self._info(0.0))
        if not self.notebook:
            self._progress.start()
            atexit.register(self._stop_live)  # restores the cursor and stdout/stderr if an exception ends the program
        elif self._display is None:
            from IPython.display import display

            self._display = display(self._progress, display_id=True)  # rich renders it as HTML (and text)
        else:
            self._display.update(self._progress)

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        self._batches += 1
        now = time.perf_counter()
        if now < self._next_refresh or self._progress is None:
            return
        self._next_refresh = now + self.refresh_interval
        with host_sync_allowed():
            self._loss_sum += float(loss)  # host sync, at most refresh_per_second times a second
        self._loss_count += 1
        self._redraw(now)

    def _redraw(self, now: float) -> None:
        self._progress.update(self._task, completed=self._batches, info=self._info(now - self._started))
        if self._display is not None:
            self._display.update(self._progress)
        else:
            self._progress.refresh()

    def _info(self, elapsed: float) -> str:
        """`412/938  loss 0.2345  1,234.5 it/s  ETA 0:03`: one text column (rich redraws tables slowly)."""
        rate = (self._batches - self._start_batches) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self._batches}/{self._total if self._total is not None else '?'}"]
        if self._loss_count:
            parts.append(f"loss {self._loss_sum / self._loss_count:.4f}")
        if rate > 0:
            parts.append(f"{rate:,.1f} it/s")
            if self._total is not None:
                parts.append(f"ETA {_duration(max(self._total - self._batches, 0) / rate)}")
        return "  ".join(parts)

    def _stop_live(self) -> None:
        if self._progress is not None:
            progress, self._progress = self._progress, None
            if not self.notebook:
                progress.stop()
                atexit.unregister(self._stop_live)


def _epoch_label(trainer: "Trainer") -> str:
    return f"epoch {trainer.state.epoch + 1:>{len(str(trainer.max_epochs))}}/{trainer.max_epochs}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _new_progress(stream: TextIO | None) -> Any:
    """A terminal bar on `stream`; with None, a bar that the notebook's display renders (never started)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
    if stream is None:
        return Progress(*columns, auto_refresh=False)
    return Progress(
        *columns,
        console=Console(file=stream, force_terminal=True),
        auto_refresh=False,
        transient=True,
        # prints to the terminal during the epoch go above the bar; a stdout piped to a file stays put
        redirect_stdout=_is_terminal(sys.stdout),
        redirect_stderr=_is_terminal(sys.stderr),
    )
