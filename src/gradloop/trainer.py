"""The Trainer: the textbook PyTorch loop, with its details done right."""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import checkpoint
from .callbacks.base import Callback, CallbackList
from .callbacks.defaults import with_defaults
from .checks import check_model_fits_data, eval_mode
from .data import Batches, make_batches
from .devices import Precision, resolve_device, resolve_precision
from .history import History
from .losses import LossFn, resolve_loss
from .metrics import Metric, MetricFn, MetricSet, resolve_metrics
from .optim import OptimizerSpec, build_optimizer
from .state import TrainState, rng_state, seed_everything, set_rng_state


class Trainer:
    """Trains a plain `nn.Module` in place: `history = Trainer(model, ...).fit((X, y), val=(Xv, yv))`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerSpec = "adam",
        lr: float | None = 1e-3,
        loss: str | LossFn = "cross_entropy",
        metrics: Sequence[str | MetricFn | Metric] | None = None,
        callbacks: Sequence[Callback] | None = None,
        max_epochs: int = 10,
        max_steps: int | None = None,
        device: str | torch.device = "auto",
        precision: str = "32",
        grad_clip_norm: float | None = None,
        accumulate_grad_batches: int = 1,
        seed: int | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        default_callbacks: bool = True,
        optimizer_options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; received {type(model).__name__}")
        _check_positive_int("max_epochs", max_epochs)
        if max_steps is not None:
            _check_positive_int("max_steps", max_steps)
        _check_positive_int("accumulate_grad_batches", accumulate_grad_batches)
        if grad_clip_norm is not None and (isinstance(grad_clip_norm, bool) or not isinstance(grad_clip_norm, (int, float)) or not grad_clip_norm > 0):
            raise ValueError(f"grad_clip_norm must be a positive number or None; received: grad_clip_norm={grad_clip_norm!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None; received: seed={seed!r}")
        self.device = resolve_device(device)
        self.precision = Precision(resolve_precision(precision), self.device)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(optimizer, self.model, lr, optimizer_options)
        self.loss_fn, self.loss_name = resolve_loss(loss)
        self.metrics = resolve_metrics(metrics, self.loss_name)
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.grad_clip_norm = grad_clip_norm
        self.accumulate_grad_batches = accumulate_grad_batches
        self.seed = seed
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = CallbackList(with_defaults(callbacks or [], self.run_dir, default_callbacks))
        self.state = TrainState()
        self.history = History()
        self.should_stop = False
        self.stop_reason: str | None = None
        self.log_names: list[str] = []
        self._order: dict[str, Any] | None = None
        self._batch_size = 64

    # ----------------------------------------------------------------------------- the loop
    def fit(self, train: Any, val: Any = None, batch_size: int = 64, shuffle: bool = True,
            resume: str | os.PathLike[str] | None = None) -> History:
        """Trains for `max_epochs` (counted over resumes) and returns the whole `History`."""
        train_batches = make_batches(train, batch_size, shuffle, self.device, "train")
        val_batches = make_batches(val, batch_size, False, self.device, "val") if val is not None else None
        check_model_fits_data(self.model, train_batches, self.loss_fn, self.loss_name, self.metrics, "train")
        if val_batches is not None:
            check_model_fits_data(self.model, val_batches, self.loss_fn, self.loss_name, self.metrics, "val")
        self._batch_size = batch_size
        self.log_names = self._log_names(val_batches is not None)
        self._prepare_run_dir()
        self.state, self.history, self._order = TrainState(), History(), None
        self.should_stop, self.stop_reason = False, None
        if self.seed is not None:
            seed_everything(self.seed)
        if resume is not None:
            self._resume(resume)
        self.callbacks.call("on_fit_start", self)
        while not self._finished():
            self._run_epoch(train_batches, val_batches)
        self.stop_reason = self.stop_reason or ("max_steps" if self._max_steps_reached() else "max_epochs")
        self.callbacks.call("on_fit_end", self)
        if self.run_dir is not None:
            checkpoint.export_weights(self.model, self.run_dir / "model.safetensors")
        return self.history

    def _run_epoch(self, train: Batches, val: Batches | None) -> None:
        self.callbacks.call("on_epoch_start", self)
        started = time.perf_counter()
        if self._order is None:
            self._order = train.new_order()
        logs = self._train_epoch(train)
        if val is not None:
            val_logs = self._evaluate(val, "val_")
            self.callbacks.call("on_validation_end", self, val_logs)
            logs.update(val_logs)
        logs["lr"] = float(self._epoch_lr)
        logs["time"] = time.perf_counter() - started
        self.history.append(logs)
        self.callbacks.call("on_epoch_end", self, logs)
        self.state.epoch += 1
        self.state.step_in_epoch = self.state.batch_in_epoch = 0
        self._order = None

    def _train_epoch(self, batches: Batches) -> dict[str, float]:
        self.model.train()
        meter = MetricSet(self.metrics, self.device)
        self._epoch_lr = self.optimizer.param_groups[0]["lr"]
        grad_norms: list[torch.Tensor] = []
        batch_listeners = self.callbacks.listens("on_train_batch_end")
        k, num_batches = self.accumulate_grad_batches, len(batches)
        assert self._order is not None
        for inputs, targets in batches.iterate(self._order, start_batch=self.state.batch_in_epoch):
            batch = self.state.batch_in_epoch
            group_start = batch - batch % k
            group_size = min(k, num_batches - group_start)
            if batch == group_start:
                self.optimizer.zero_grad(set_to_none=True)
            loss = self._forward_backward(inputs, targets, group_size, meter)
            self.state.batch_in_epoch += 1
            if batch + 1 == group_start + group_size:
                grad_norms += self._optimizer_step()
            if batch_listeners:
                self.callbacks.call("on_train_batch_end", self, loss)
            if self.should_stop or self._max_steps_reached():
                break
        logs = meter.compute()
        if grad_norms:
            logs["grad_norm"] = float(torch.stack(grad_norms).mean())
        return logs

    def _forward_backward(self, inputs: Any, targets: torch.Tensor, group_size: int, meter: MetricSet) -> torch.Tensor:
        with self.precision.autocast():
            outputs = self.model(inputs)
            loss = self._loss(outputs, targets)
        self.precision.backward(loss / group_size if group_size > 1 else loss)
        loss = loss.detach()
        meter.update(loss, outputs.detach(), targets, _batch_len(targets, inputs))
        return loss

    def _optimizer_step(self) -> list[torch.Tensor]:
        norms = []
        if self.grad_clip_norm is not None:
            self.precision.unscale(self.optimizer)
            norms.append(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm))
        self._epoch_lr = self.optimizer.param_groups[0]["lr"]
        self.precision.step(self.optimizer)
        self.state.global_step += 1
        self.state.step_in_epoch += 1
        return norms

    def _evaluate(self, batches: Batches, prefix: str) -> dict[str, float]:
        meter = MetricSet(self.metrics, self.device)
        with torch.inference_mode(), eval_mode(self.model):
            for inputs, targets in batches.iterate(batches.new_order()):
                with self.precision.autocast():
                    outputs = self.model(inputs)
                    loss = self._loss(outputs, targets)
                meter.update(loss, outputs, targets, _batch_len(targets, inputs))
        return meter.compute(prefix)

    def _loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        try:
            return self.loss_fn(outputs, targets)
        except (IndexError, RuntimeError) as err:
            shapes = f"outputs {tuple(outputs.shape)}, targets {tuple(targets.shape)} {targets.dtype}"
            raise ValueError(
                f"the loss failed at epoch {self.state.epoch}, batch {self.state.batch_in_epoch} ({shapes}): "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from err

    def _finished(self) -> bool:
        return self.should_stop or self.state.epoch >= self.max_epochs or self._max_steps_reached()

    def _max_steps_reached(self) -> bool:
        return self.max_steps is not None and self.state.global_step >= self.max_steps

    # ----------------------------------------------------------------------------- evaluation
    def validate(self, data: Any, batch_size: int | None = None) -> dict[str, float]:
        """Loss and metrics over `data` in eval mode, as `{"val_loss": ..., "val_<metric>": ...}`."""
        return self._evaluate_data(data, batch_size, "val")

    def test(self, data: Any, batch_size: int | None = None) -> dict[str, float]:
        """Like `validate`, with keys `test_loss`, `test_<metric>`."""
        return self._evaluate_data(data, batch_size, "test")

    def _evaluate_data(self, data: Any, batch_size: int | None, role: str) -> dict[str, float]:
        batches = make_batches(data, batch_size or self._batch_size, False, self.device, role)
        check_model_fits_data(self.model, batches, self.loss_fn, self.loss_name, self.metrics, role)
        return self._evaluate(batches, f"{role}_")

    def predict(self, data: Any, batch_size: int | None = None) -> torch.Tensor:
        """Model outputs for every sample, concatenated on the CPU (eval mode, no grad)."""
        batches = make_batches(data, batch_size or self._batch_size, False, self.device, "predict", needs_targets=False)
        outputs = []
        with torch.inference_mode(), eval_mode(self.model):
            for inputs, _ in batches.iterate(batches.new_order()):
                with self.precision.autocast():
                    outputs.append(self.model(inputs))
        return torch.cat(outputs).cpu()

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as one dict."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
            "progress": self.state.state_dict(),
            "order": self._order,
            "history": self.history.state_dict(),
            "callbacks": self.callbacks.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.precision.scaler is not None and state.get("scaler") is not None:
            self.precision.scaler.load_state_dict(state["scaler"])
        self.state.load_state_dict(state["progress"])
        self._order = state["order"]
        self.history.load_state_dict(state["history"])
        self.callbacks.load_state_dict(state["callbacks"])
        set_rng_state(state["rng"])

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        return checkpoint.save(self.state_dict(), Path(path))

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        self.load_state_dict(checkpoint.load(Path(path), map_location=self.device))

    def _resume(self, resume: str | os.PathLike[str]) -> None:
        if str(resume) == "last":
            if self.run_dir is None:
                raise ValueError("resume='last' needs a run_dir: pass Trainer(run_dir=...) or a checkpoint path")
            path = checkpoint.latest(self.run_dir / "checkpoints")
            if path is None:
                print(f"gradloop: no checkpoint in {self.run_dir / 'checkpoints'} yet: starting from scratch", file=sys.stderr)
                return
        else:
            path = Path(resume)
        self.load_checkpoint(path)

    # ----------------------------------------------------------------------------- helpers
    def _log_names(self, has_val: bool) -> list[str]:
        names = ["loss", *(m.name for m in self.metrics)]
        if has_val:
            names += [f"val_{n}" for n in names]
        names += ["lr", "time"] + (["grad_norm"] if self.grad_clip_norm is not None else [])
        return names

    def _prepare_run_dir(self) -> None:
        if self.run_dir is None:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ValueError(f"run_dir {str(self.run_dir)!r} cannot be written ({err.strerror}): choose a writable directory") from err


def _batch_len(targets: Any, inputs: Any) -> int:
    reference = targets if isinstance(targets, torch.Tensor) else inputs
    return int(reference.shape[0]) if isinstance(reference, torch.Tensor) else len(reference)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; received: {name}={value!r}")
