"""ModelCheckpoint: when to save and what to keep. How a file is stored is checkpoint.py's business."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import distributed
from ..data.devices import host_sync_allowed
from ..persistence import checkpoint, sharded
from ..util import check_count, weights_are_finite
from .base import Callback
from .monitor import VAL_LOSS, check_monitor, infer_mode, is_improvement, resolve_monitor, worst

if TYPE_CHECKING:
    from ..trainer import Trainer

LAST, BEST = "last.ckpt", "best.ckpt"
_PERIODIC = re.compile(r"^epoch-(\d+)-step-(\d+)\.ckpt$")


class ModelCheckpoint(Callback):
    """Writes `checkpoints/last.ckpt`, `best.ckpt` and periodic `epoch-<E>-step-<N>.ckpt` files.

    Every file is the full training state (`trainer.save_checkpoint`), so any of them resumes.
    - Every `every_n_epochs` epochs (at the epoch's end) and/or every `every_n_steps` optimizer
      steps, a periodic file `epoch-<E>-step-<N>.ckpt` is written (E counts from 0, N is
      `trainer.state.global_step`); the newest `keep` of them are kept (`keep=None`: all,
      `keep=0`: none). Older ones are deleted only after the new one is committed, so there is
      always at least one good checkpoint.
    - `best.ckpt` whenever `monitor` improves (checked at every epoch's end, Keras's rule with
      `mode`); `last.ckpt` with every write, and once more at the end of training if the state
      changed since: it is always the newest state.
    - A state whose loss or weights are not finite is never written (a note says so): the files
      from before stay as they were.

    Files written at the same moment hold the same bytes: the first is written, the others are
    hard links to it (or copies where links are not supported). Runs after the other callbacks
    (`priority = 20`), so their epoch-end state is part of the checkpoint. `dirpath` defaults to
    `run_dir/checkpoints`; names are made here, never taken from data.
    """

    priority = 20
    rank_zero_only = True  # under torchrun: rank 0 alone writes and prints
    saves_checkpoints = True  # under strategy="fsdp" every rank runs it (writes its shards); rank 0 links, prunes and prints

    def __init__(
        self,
        monitor: str = VAL_LOSS,
        mode: str = "auto",
        save_best: bool = True,
        save_last: bool = True,
        keep: int | None = 3,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        dirpath: str | os.PathLike[str] | None = None,
    ) -> None:
        check_monitor(monitor, mode)
        check_count("keep", keep, minimum=0, optional=True)
        check_count("every_n_epochs", every_n_epochs, optional=True)
        check_count("every_n_steps", every_n_steps, optional=True)
        self._requested = (monitor, mode)
        self.monitor, self.mode = monitor, mode  # resolved in on_fit_start (the default may fall back to "loss")
        self.save_best, self.save_last = bool(save_best), bool(save_last)
        self.keep, self.every_n_epochs, self.every_n_steps = keep, every_n_epochs, every_n_steps
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self._resolved = False
        self._reset()

    def _reset(self) -> None:
        self.best = worst(self.mode)
        self.best_path: str | None = None
        self.kept: list[str] = []  # periodic files written by this run, oldest first
        self._saved: tuple[int, int, int] | None = None  # (epoch, step, batch) of the state last written
        self._step_due = False  # the step just taken is one to save at, once its batch's loss is known

    def listens(self, hook: str) -> bool:
        if hook in ("on_optimizer_step", "on_train_batch_end"):  # without step saving: nothing per batch or step
            return self.every_n_steps is not None
        return super().listens(hook)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: "Trainer") -> None:
        directory = self.dirpath or (trainer.run_dir / "checkpoints" if trainer.run_dir is not None else None)
        if directory is None:
            raise ValueError("ModelCheckpoint needs a place to write: pass dirpath=... or Trainer(run_dir=...)")
        self._directory = directory
        monitor, mode = self._requested
        if self.save_best:
            self.monitor = resolve_monitor(trainer.log_names, monitor, "ModelCheckpoint")
            self.mode = infer_mode(self.monitor, mode)
            self._resolved = True
        self._reset()  # a fresh fit starts over; a resumed one gets its state back through load_state_dict

    def on_optimizer_step(self, trainer: "Trainer") -> None:
        assert self.every_n_steps is not None  # listens() says so
        self._step_due = trainer.state.global_step % self.every_n_steps == 0

    def on_train_batch_end(self, trainer: "Trainer", loss: torch.Tensor) -> None:
        # Right after a due step (inside an accumulation group the gradients so far are not part
        # of a checkpoint), once the loss of the batch that completed it is known.
        if not self._step_due:
            return
        self._step_due = False
        state = trainer.state
        with host_sync_allowed():  # a checkpoint every every_n_steps steps
            if self._can_save(trainer, loss=loss):
                mark = (state.epoch, state.global_step, state.batch_in_epoch)
                self._write(trainer, self._periodic(state.epoch, state.global_step), improved=None, mark=mark)

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        epoch, step = trainer.state.epoch, trainer.state.global_step
        # a due step with no batch after it (an unsized loader that ended mid-group) is saved here
        due = self._step_due or (self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0)
        self._step_due = False
        value = logs.get(self.monitor) if self.save_best else None
        improved = float(value) if value is not None and is_improvement(float(value), self.best, self.mode) else None
        if not (due or improved is not None) or not self._can_save(trainer, epoch_loss=logs.get("loss")):
            return
        # The trainer saves an epoch-end state as "epoch + 1 begins": mark it so.
        self._write(trainer, self._periodic(epoch, step) if due else [], improved=improved, mark=(epoch + 1, step, 0))

    def on_fit_end(self, trainer: "Trainer") -> None:
        state = trainer.state
        mark = (state.epoch, state.global_step, state.batch_in_epoch)
        if self.save_last and mark != self._saved and state.global_step > 0 and self._can_save(trainer):
            self._write(trainer, [], improved=None, mark=mark)

    # ------------------------------------------------------------------ writing
    def _write(self, trainer: "Trainer", periodic: list[str], improved: float | None, mark: tuple[int, int, int]) -> None:
        names = periodic + ([BEST] if improved is not None else []) + ([LAST] if self.save_last else [])
        if not names:
            return
        before = (self.best, self.best_path, list(self.kept), self._saved)
        doomed: list[str] = []
        if periodic:
            kept = [k for k in self.kept if k != periodic[0]] + periodic
            cut = len(kept) - self.keep if self.keep is not None else 0
            doomed, self.kept = kept[: max(cut, 0)], kept[max(cut, 0) :]
        if improved is not None:
            self.best, self.best_path = improved, BEST
        self._saved = mark
        try:  # the callback's state_dict() is part of the file: it already describes the new state
            first = trainer.save_checkpoint(checkpoint.path_in(self._directory, names[0]))
            link = sharded.link if first.is_dir() else checkpoint.link
            for name in names[1:] if distributed.is_rank_zero() else []:
                link(first, checkpoint.path_in(self._directory, name))
        except BaseException:
            self.best, self.best_path, self.kept, self._saved = before
            raise
        if periodic and distributed.is_rank_zero():  # only now that the new file is committed
            self._prune(self._directory, doomed)

    def _prune(self, directory: Path, doomed: list[str]) -> None:
        """Deletes periodic files beyond `keep`, and ones this run does not track (from an earlier
        run in the same directory, or written after the checkpoint that this run resumed from)."""
        on_disk = [p.name for p in directory.iterdir() if _PERIODIC.match(p.name)] if directory.is_dir() else []
        for name in doomed + [n for n in on_disk if n not in self.kept]:
            try:
                sharded.remove(directory / name)
            except OSError as err:
                print(f"gradloop: ModelCheckpoint could not delete {directory / name}: {err.strerror}", file=sys.stderr)

    def _periodic(self, epoch: int, step: int) -> list[str]:
        return [] if self.keep == 0 else [f"epoch-{epoch}-step-{step}.ckpt"]

    def _can_save(self, trainer: "Trainer", loss: torch.Tensor | None = None, epoch_loss: float | None = None) -> bool:
        """False (with a note) when the loss or the weights are not finite: such a state is never written."""
        problem = None
        if epoch_loss is not None and not math.isfinite(epoch_loss):
            problem = f"the epoch's loss is {epoch_loss}"
        elif loss is not None and not bool(torch.isfinite(loss).all()):  # a sync, but only when saving
            problem = "the batch's loss is not finite"
        elif not weights_are_finite(trainer.model):
            problem = "the weights are not finite"
        if problem is None:
            return True
        if distributed.is_rank_zero():
            where = f"epoch {trainer.state.epoch}, step {trainer.state.global_step}"
            print(f"gradloop: ModelCheckpoint did not save at {where}: {problem}; the previous checkpoints stay", file=sys.stderr)
        return False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": str(self.monitor),
            "mode": self.mode,
            "best": self.best,
            "best_path": self.best_path,
            "kept": list(self.kept),
            "saved": list(self._saved) if self._saved is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self._resolved:  # before on_fit_start (the trainer restores after it): take the saved view
            self.monitor, self.mode = str(state.get("monitor", self.monitor)), str(state.get("mode", self.mode))
        if state.get("monitor") == str(self.monitor) and state.get("mode") == self.mode:
            self.best, self.best_path = float(state["best"]), state.get("best_path")
        else:
            print(
                f"gradloop: ModelCheckpoint now monitors {str(self.monitor)!r} ({self.mode}); the checkpoint's best "
                f"{state.get('monitor')!r} ({state.get('mode')}) does not apply and best.ckpt starts over",
                file=sys.stderr,
            )
        self.kept = [name for name in state.get("kept", []) if _PERIODIC.match(name)]
        saved = state.get("saved")
        self._saved = tuple(saved) if saved is not None else None
