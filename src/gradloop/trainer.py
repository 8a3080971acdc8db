"""The Trainer: the textbook PyTorch loop, with its details done right."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import compilation
from .callbacks.base import Callback, CallbackList
from .callbacks.defaults import with_defaults
from .callbacks.progress import verbosity
from .checks import check_model_fits_data, eval_mode
from .data import distributed, fsdp
from .data.batches import Batches, LoaderBatches, make_batches, unshuffled
from .data.devices import Precision, host_sync_allowed, resolve_device, resolve_precision, sync_debug, sync_debug_mode
from .data.loader_options import loader_options_for
from .history import History
from .names.losses import CLASSIFICATION_LOSSES, LossFn, resolve_loss
from .names.metrics import Metric, MetricFn, MetricSet, resolve_metrics
from .names.optim import OptimizerSpec, build_optimizer, check_closure_settings, needs_closure
from .persistence import checkpoint, finding, layout, sharded, weights
from .persistence.runlock import RunLock
from .persistence.signals import EXIT_CODES, GracefulStop, StopVote
from .state import ResumePoint, TrainState
from .step import PredictFn, Step, StepFn, StepResult, batch_size_of, concatenate
from .util import check_count, did_you_mean, is_number, length_or_none, preserved_rng, seed_everything, weights_are_finite

if TYPE_CHECKING:
    from .doctor import LRFindResult


STRATEGIES = ("auto", "ddp", "fsdp")


class Trainer:
    """Trains a plain `nn.Module` in place: `history = Trainer(model, ...).fit((X, y), val=(Xv, yv))`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerSpec = "adam",
        lr: float | None = 1e-3,
        loss: str | LossFn | None = "cross_entropy",
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
        step: StepFn | None = None,
        predict_step: PredictFn | None = None,
        val_every_n_steps: int | None = None,
        strategy: str = "auto",
        compile: bool | dict[str, Any] = False,
        fsdp_policy: fsdp.Policy | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; received {type(model).__name__}")
        check_count("max_epochs", max_epochs)
        check_count("max_steps", max_steps, optional=True)
        check_count("accumulate_grad_batches", accumulate_grad_batches)
        if grad_clip_norm is not None and (not is_number(grad_clip_norm) or not grad_clip_norm > 0):
            raise ValueError(f"grad_clip_norm must be a positive number or None; received: grad_clip_norm={grad_clip_norm!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None; received: seed={seed!r}")
        if strategy not in STRATEGIES:  # auto/ddp: DistributedDataParallel under torchrun; fsdp: FSDP2; one process otherwise
            raise ValueError(f"unknown strategy {strategy!r}{did_you_mean(str(strategy), STRATEGIES)}: use one of {', '.join(STRATEGIES)}")
        fsdp.check_policy(fsdp_policy)
        self.strategy = strategy
        if strategy == "fsdp":
            fsdp.check_optimizer(optimizer)
        self.device = distributed.device_for_rank(device, resolve_device(device))
        distributed.init_if_needed(self.device)  # under torchrun: join the process group
        self.precision = Precision(resolve_precision(precision), self.device)
        self.model = compilation.plain_module(model).to(self.device)  # what is saved: never torch.compile's wrapper
        self._sharded = strategy == "fsdp" and distributed.active()
        if self._sharded:  # in place, before the optimizer sees the parameters
            fsdp.shard(self.model, fsdp_policy, self.precision.name)
        # The forwards run through the compiled module (compile=..., or the user's), the training one also
        # through DistributedDataParallel under torchrun; `model` stays the user's.
        self._eval_model = compilation.compiled_forward(model, self.model, compilation.compile_options(compile))
        # under torchrun: the stop flags ride on DDP's gradient all-reduce, or (FSDP) on a CPU all-reduce of their own
        channel = distributed.StopChannel()
        self._channel: distributed.StopChannel | fsdp.StopChannel = fsdp.StopChannel() if self._sharded else channel
        self._train_model = self._eval_model if self._sharded else distributed.wrap(self._eval_model, self.device, channel)
        self.optimizer = build_optimizer(optimizer, self.model, lr, optimizer_options)
        for name, fn in (("step", step), ("predict_step", predict_step)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a function (model, batch) -> ...; received: {name}={fn!r}")
        # with a step of its own the loss is the step's business; loss=None: the model computes it
        self.loss_fn: LossFn | None = None
        self.loss_name: str | None = None
        if loss is not None and step is None:
            self.loss_fn, self.loss_name = resolve_loss(loss)
        if metrics is None:  # Keras users expect accuracy for classification; pass metrics=[] for none
            metrics = ["accuracy"] if self.loss_name in CLASSIFICATION_LOSSES else []
        self.metrics = resolve_metrics(metrics, self.loss_name)
        self._step = Step(self.loss_fn, self.loss_name, step, predict_step)
        self._closure = needs_closure(self.optimizer)
        if self._closure:
            check_closure_settings(self.optimizer, accumulate_grad_batches, grad_clip_norm, self.precision.name)
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.grad_clip_norm = grad_clip_norm
        self.accumulate_grad_batches = accumulate_grad_batches
        check_count("val_every_n_steps", val_every_n_steps, optional=True)
        self.val_every_n_steps = val_every_n_steps
        self.validating_at_step: int | None = None  # the global step of a validation inside an epoch, while it runs
        self.seed = seed
        if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
            raise TypeError(f"run_dir must be a path or None; received: run_dir={run_dir!r}")
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if isinstance(callbacks, Callback):
            callbacks = [callbacks]
        self.callbacks = CallbackList(
            with_defaults(callbacks or [], self.run_dir, default_callbacks), rank_zero=distributed.is_rank_zero(), sharded=self._sharded
        )
        if self._sharded:
            fsdp.check_callbacks(self.callbacks)
        self.state = TrainState()
        self.history = History()
        self.should_stop = False
        self.stop_reason: str | None = None
        self.log_names: list[str] = []
        self.batches_per_epoch: int | None = None  # for progress displays; None for a loader without len()
        self.resume_command: str | None = None  # shown after a signal; the CLI sets `gradloop resume DIR`
        self.resume_point = ResumePoint(MetricSet(self.metrics, self.device))
        self.fit_settings: dict[str, Any] = {}  # what must match on resume (batch size, data size, ...)
        self.value_names: list[str] = []  # what the step logs besides the loss, learnt before the first step
        self._batch_size = 64
        self._signals = GracefulStop()
        self._sync_mode = 0  # the user's torch.cuda sync debug mode: applied to the steps only (see devices.sync_debug)
        self._step_listeners = self.callbacks.listens("on_optimizer_step")
        self._train_batches: Batches | None = None  # during fit, for training_batches()

    # ----------------------------------------------------------------------------- the loop
    def fit(
        self,
        train: Any,
        val: Any = None,
        batch_size: int = 64,
        shuffle: bool = True,
        resume: str | os.PathLike[str] | None = None,
        loader_options: dict[str, Any] | None = None,
    ) -> History:
        """Trains for `max_epochs` (counted over resumes) and returns the whole `History`.

        `loader_options`: DataLoader settings (num_workers, ...) for a Dataset given as train or val."""
        self._sync_mode = sync_debug_mode()
        with host_sync_allowed():
            return self._checked_fit(train, val, batch_size, shuffle, resume, loader_options)

    def _checked_fit(
        self, train: Any, val: Any, batch_size: int, shuffle: bool, resume: str | os.PathLike[str] | None, loader_options: Any
    ) -> History:
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False; received: shuffle={shuffle!r}")
        if resume is not None and not isinstance(resume, (str, os.PathLike)):
            raise TypeError(f"resume must be None, 'last' or a checkpoint path; received: resume={resume!r}")
        options = loader_options_for(loader_options, train, val)
        train_batches = make_batches(train, batch_size, shuffle, self.device, "train", shard=True, loader_options=options)
        if isinstance(train, DataLoader) and (warning := distributed.unsharded_loader_warning(train)) and distributed.is_rank_zero():
            warnings.warn(warning, stacklevel=2)
        val_batches = None if val is None else make_batches(val, batch_size, False, self.device, "val", shard=True, loader_options=options)
        self.value_names = check_model_fits_data(self.model, train_batches, self._step, self.metrics, "train") or []
        if val_batches is not None:
            check_model_fits_data(self.model, val_batches, self._step, self.metrics, "val")
        if resume is not None and str(resume) == "last" and self.run_dir is None:
            raise ValueError("resume='last' needs a run_dir: pass Trainer(run_dir=...) or a checkpoint path")
        self._batch_size = batch_size
        self.fit_settings = self._resume_settings(train_batches, batch_size, shuffle)
        self.batches_per_epoch = self.fit_settings["num_batches"]
        self.log_names = self.logged_names(val_batches is not None)
        self._prepare_run_dir()
        lock = RunLock(self.run_dir) if self.run_dir is not None and distributed.is_rank_zero() else contextlib.nullcontext()
        with lock:
            try:
                return self._fit(train_batches, val_batches, resume)
            finally:
                self._train_batches = None  # its tensors may hold device memory

    def _fit(self, train: Batches, val: Batches | None, resume: str | os.PathLike[str] | None) -> History:
        self.state = TrainState()
        self.history = History(params={"verbose": verbosity(self.callbacks), "epochs": self.max_epochs, "steps": self.batches_per_epoch})
        self._train_batches = train
        self.resume_point = ResumePoint(MetricSet(self.metrics, self.device, self.value_names), data=train)
        self.should_stop, self.stop_reason = False, None
        self._stop = StopVote(self._signals, self._channel)
        if self.seed is not None:
            seed_everything(self.seed)
        found = self._find_resume_point(resume) if resume is not None else None
        if found is None:
            self.callbacks.call("on_fit_start", self)
        else:
            path, saved = found
            layout.restore(self, saved, path, setup=lambda: self.callbacks.call("on_fit_start", self))
            if not distributed.is_rank_zero():
                self.resume_point.metrics.reset()  # a mid-epoch checkpoint holds rank 0's partial sums: count them once
            print(f"gradloop: resuming from {path} (epoch {self.state.epoch}, step {self.state.global_step})", file=sys.stderr)
        with self._signals:
            while not self._finished():
                self._run_epoch(train, val)
                if self._stop.code is not None or self._stop.at_epoch_end():
                    self._stop_on_signal()
        if self.stop_reason is None:
            self.stop_reason = "stopped by a callback" if self.should_stop else "max_steps" if self._max_steps_reached() else "max_epochs"
        self.callbacks.call("on_fit_end", self)
        if (final := self.callbacks.final_weights(self)) is not None:  # EMA, SWA, restore_best_weights
            self.model.load_state_dict(final)
        if self.run_dir is not None and (self._sharded or distributed.is_rank_zero()):  # FSDP: every rank gathers
            if weights_are_finite(self.model):
                weights.export_weights(self.model, self.run_dir / "model.safetensors", sharded=self._sharded)
            else:
                print("gradloop: the final weights are not finite: model.safetensors not written", file=sys.stderr)
        return self.history

    def _run_epoch(self, train: Batches, val: Batches | None) -> None:
        self.callbacks.call("on_epoch_start", self)
        started = time.perf_counter()
        if isinstance(train, LoaderBatches) and distributed.is_distributed():
            train.set_epoch(self.state.epoch)  # a user loader's DistributedSampler
        if self.resume_point.order is None:
            self.resume_point.start_epoch(train.new_order(), self.optimizer.param_groups[0]["lr"])
        logs = self._train_epoch(train, val)
        if self._stop.code is not None:
            return  # stopped mid-epoch: the checkpoint resumes at this very step
        if val is not None:
            val_logs = self._evaluate(val, "val_", self.value_names, self.callbacks.evaluation_model(self))
            self.callbacks.call("on_validation_end", self, val_logs)
            logs.update(val_logs)
        logs["lr"] = self.resume_point.epoch_lr
        logs["time"] = time.perf_counter() - started
        self.history.append(logs)
        self.resume_point.epoch_done = True
        self.callbacks.call("on_epoch_end", self, logs)
        self.state.epoch += 1
        self.state.step_in_epoch = self.state.batch_in_epoch = 0
        self.resume_point.end_epoch()

    def _train_epoch(self, batches: Batches, val: Batches | None = None) -> dict[str, float]:
        self._train_model.train()
        meter = self.resume_point.metrics
        batch_listeners = self.callbacks.listens("on_train_batch_end")
        # Under torchrun, callbacks that run on every rank see the mean loss of all ranks, so that
        # per-batch decisions (TerminateOnNaN) agree: one all-reduce per batch, only then.
        reduce_batch_loss = distributed.active() and self.callbacks.listens_on_every_rank("on_train_batch_end")
        k, num_batches = self.accumulate_grad_batches, length_or_none(batches)
        assert self.resume_point.order is not None
        with sync_debug(self._sync_mode):  # the steps: no host sync (the user may check it with torch.cuda.set_sync_debug_mode)
            for batch in batches.iterate(self.resume_point.order, start_batch=self.state.batch_in_epoch):
                index = self.state.batch_in_epoch
                group_start = index - index % k
                group_size = k if num_batches is None else min(k, num_batches - group_start)
                step_taken = index + 1 == group_start + group_size
                if self._closure:  # LBFGS and the like: the optimizer runs forward and backward itself
                    self.state.batch_in_epoch += 1
                    loss = self._closure_step(batch, meter)
                else:
                    if index == group_start:
                        self.optimizer.zero_grad(set_to_none=True)
                    share = _share_of_group(batches, index, group_start, group_size)
                    # DDP: gradients are averaged over ranks only at the group's last batch (an unsized loader
                    # may end mid-group, so there every batch syncs)
                    loss = self._forward_backward(batch, share, meter, sync_grads=step_taken or num_batches is None)
                    self.state.batch_in_epoch += 1
                    if step_taken:
                        self._optimizer_step(meter)
                if reduce_batch_loss:
                    loss = distributed.all_reduce_sum(loss) / distributed.world()[1]
                if batch_listeners:
                    self.callbacks.call("on_train_batch_end", self, loss)
                stop_voted = step_taken and self._stop.after_step()  # every rank votes at every step
                if step_taken and not stop_voted and self._validation_due(val, num_batches):
                    self._validate_inside_epoch(val)  # type: ignore[arg-type]
                if self.should_stop or self._max_steps_reached() or stop_voted:
                    break
            else:
                if self.state.batch_in_epoch % k and num_batches is None:  # an unsized loader ended mid-group
                    self._optimizer_step(meter)
        return meter.compute()

    def _validation_due(self, val: Batches | None, num_batches: int | None) -> bool:
        """Every `val_every_n_steps` optimizer steps, but not at the epoch's end: that validation comes anyway."""
        every = self.val_every_n_steps
        at_end = num_batches is not None and self.state.batch_in_epoch >= num_batches
        return val is not None and every is not None and self.state.global_step % every == 0 and not at_end

    def _validate_inside_epoch(self, val: Batches) -> None:
        """A validation between two optimizer steps: `on_validation_end` sees its logs; the History does not.
        It draws no random numbers, so training goes on exactly as without it."""
        self.validating_at_step = self.state.global_step
        try:
            with host_sync_allowed():
                with preserved_rng():
                    logs = self._evaluate(val, "val_", self.value_names, self.callbacks.evaluation_model(self))
                self.callbacks.call("on_validation_end", self, logs)
        finally:
            self.validating_at_step = None

    def _forward_backward(self, batch: Any, share: float | int, meter: MetricSet, sync_grads: bool = True) -> torch.Tensor:
        """`share`: this batch's part of its accumulation group (an int k means 1/k)."""
        model = self._train_model
        with fsdp.gradient_sync(model, sync_grads):
            with self.precision.autocast():
                result = self._step(model, batch)
            if isinstance(share, int):
                self.precision.backward(result.loss / share if share > 1 else result.loss)
            else:
                self.precision.backward(result.loss * share)
        return _count(meter, result, batch)

    def _closure_step(self, batch: Any, meter: MetricSet) -> torch.Tensor:
        """One optimizer step that re-evaluates the batch as often as the optimizer asks (torch's closure);
        the metrics count the batch once, from the first evaluation (the weights before the step)."""
        first: list[StepResult] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast():
                result = self._step(self._train_model, batch)
            self.precision.backward(result.loss)
            if not first:
                first.append(result)
            return result.loss

        self._optimizer_step(meter, closure)
        return _count(meter, first[0], batch)

    def _optimizer_step(self, meter: MetricSet, closure: Callable[[], torch.Tensor] | None = None) -> None:
        if self.grad_clip_norm is not None:
            self.precision.unscale(self.optimizer)
            meter.add_grad_norm(fsdp.clip_grad_norm(self.model.parameters(), self.grad_clip_norm))
        self.resume_point.epoch_lr = float(self.optimizer.param_groups[0]["lr"])
        self.precision.step(self.optimizer, closure)
        self.state.global_step += 1
        self.state.step_in_epoch += 1
        if self._step_listeners:
            self.callbacks.call("on_optimizer_step", self)

    def _evaluate(self, batches: Batches, prefix: str, value_names: list[str], model: nn.Module | None = None) -> dict[str, float]:
        """`model`: what to evaluate instead of the model's own (compiled) forward (a callback's averaged weights)."""
        forward = self._eval_model if model is None else model
        meter = MetricSet(self.metrics, self.device, value_names)
        with fsdp.inference(self.model), eval_mode(self.model if model is None else model):
            for batch in batches.iterate(batches.new_order()):
                with self.precision.autocast():
                    result = self._step(forward, batch)
                _count(meter, result, batch)
        return meter.compute(prefix)

    def training_batches(self) -> Iterator[Any]:
        """During fit: one pass over its training data, each batch on the device as the step gets it, in the
        data's order (a DataLoader of yours: as it iterates); for statistics passes like torch's update_bn."""
        if self._train_batches is None:
            raise RuntimeError("training_batches() is there during fit only: call it from a callback")
        return unshuffled(self._train_batches)

    def run_step(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """`model` on one batch as training runs it (the step, under the precision's autocast); returns the loss."""
        with self.precision.autocast():
            return self._step(model, batch).loss

    def _finished(self) -> bool:
        return self.should_stop or self.state.epoch >= self.max_epochs or self._max_steps_reached()

    def _max_steps_reached(self) -> bool:
        return self.max_steps is not None and self.state.global_step >= self.max_steps

    # ----------------------------------------------------------------------------- evaluation
    def validate(self, data: Any, batch_size: int | None = None, loader_options: dict[str, Any] | None = None) -> dict[str, float]:
        """Loss and metrics over `data` in eval mode, as `{"val_loss": ..., "val_<metric>": ...}`."""
        return self._evaluate_data(data, batch_size, "val", loader_options)

    def test(self, data: Any, batch_size: int | None = None, loader_options: dict[str, Any] | None = None) -> dict[str, float]:
        """Like `validate`, with keys `test_loss`, `test_<metric>`."""
        return self._evaluate_data(data, batch_size, "test", loader_options)

    def check_data(self, data: Any, role: str = "train", batch_size: int | None = None) -> None:
        """The checks `fit` makes before the first step, on `data` alone: raises ValueError or TypeError
        naming what does not fit (shapes, labels, the loss, the step, the metrics) and the fix."""
        batches = make_batches(data, self._batch_size if batch_size is None else batch_size, False, self.device, role)
        check_model_fits_data(self.model, batches, self._step, self.metrics, role)

    def _evaluate_data(self, data: Any, batch_size: int | None, role: str, loader_options: dict[str, Any] | None) -> dict[str, float]:
        # under torchrun every rank evaluates its shard and the metrics are all-reduced: call it on every rank
        size, options = self._batch_size if batch_size is None else batch_size, loader_options_for(loader_options, data)
        batches = make_batches(data, size, False, self.device, role, shard=True, loader_options=options)
        value_names = check_model_fits_data(self.model, batches, self._step, self.metrics, role)
        return self._evaluate(batches, f"{role}_", value_names or [])

    def predict(self, data: Any, batch_size: int | None = None, loader_options: dict[str, Any] | None = None) -> torch.Tensor:
        """Model outputs for every sample, concatenated on the CPU (eval mode, no grad; float32 under
        mixed precision). `predict_step(model, batch)` decides what a batch gives, if set; outputs that are
        tuples or dicts of tensors are concatenated field by field."""
        size, options = self._batch_size if batch_size is None else batch_size, loader_options_for(loader_options, data)
        batches = make_batches(data, size, False, self.device, "predict", needs_targets=False, loader_options=options)
        outputs = []
        with fsdp.inference(self.model), eval_mode(self.model):
            for batch in batches.iterate(batches.new_order()):
                with self.precision.autocast():
                    outputs.append(self._step.predict(self._eval_model, batch))
        return concatenate(outputs)

    def find_lr(self, data: Any, batch_size: int | None = None, **options: Any) -> "LRFindResult":
        """LR range test on a copy of the model with a fresh optimizer like this trainer's.

        The model, the optimizer and the RNGs are left as they were; with a run_dir the plot goes
        to run_dir/lr_find.png. `options`: start_lr, end_lr, num_steps, smoothing, seed, plot.
        """
        from .doctor import lr_find  # training itself does not need the doctor

        if self._sharded:
            raise ValueError("find_lr copies the whole model, which strategy='fsdp' shards: run it in one process (without torchrun)")
        if self.loss_fn is None and self._step.step_fn is None:
            raise ValueError("find_lr needs a loss or a step: a model that computes its own loss (loss=None) takes step=...")
        if self.run_dir is not None and distributed.is_rank_zero():
            options.setdefault("plot", self.run_dir / "lr_find.png")
        return lr_find(
            self.model,
            data,
            loss=self.loss_fn,
            optimizer=self.optimizer,
            step=self._step.step_fn,
            batch_size=self._batch_size if batch_size is None else batch_size,
            device=self.device,
            **options,
        )

    # ----------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as one dict (see `layout.py` for the layout)."""
        return layout.trainer_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()` completely (weights, optimizer, progress, callbacks, RNG)."""
        layout.restore(self, state, "the state dict")

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Writes the full training state to `path` atomically, with a checksum (strategy="fsdp": a directory
        of sharded DCP files with a manifest, written by every rank: call it on all)."""
        if self.strategy == "fsdp":  # a directory of DCP shards: a collective, every rank writes its part
            return sharded.save(self, Path(path))
        return checkpoint.save(self.state_dict(), Path(path))

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Loads a checkpoint written by `save_checkpoint` (verified, no code unpickled)."""
        saved = self._load(Path(path))
        written_with = (saved.get("settings") or {}).get("optimizer")
        if written_with is not None and written_with != type(self.optimizer).__name__:
            raise checkpoint.CheckpointError(
                f"checkpoint {str(path)!r} holds the state of a {written_with} optimizer; this trainer uses "
                f"{type(self.optimizer).__name__}: build the Trainer with the same optimizer"
            )
        layout.restore(self, saved, path)

    def _find_resume_point(self, resume: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]] | None:
        if str(resume) == "last":
            assert self.run_dir is not None
            found = finding.load_latest(self.run_dir / "checkpoints", load=self._load)  # verifies once
            if found is None:
                print(f"gradloop: no checkpoint in {self.run_dir / 'checkpoints'} yet: starting from scratch", file=sys.stderr)
                return None
            path, saved = found
        else:
            path = Path(resume)
            saved = self._load(path)
        layout.check_settings(saved, self.fit_settings, path)
        return path, saved

    def _load(self, path: Path) -> dict[str, Any]:
        """A checkpoint file, or a sharded checkpoint directory (strategy="fsdp"'s, loadable by any strategy)."""
        return sharded.load(self, path) if path.is_dir() else checkpoint.load(path, map_location=self.device)

    def _stop_on_signal(self) -> None:
        """Writes the resume point and exits with 130 (SIGINT) or 143 (SIGTERM), on every rank alike."""
        code = self._stop.code or 143
        name = next((signum.name for signum, exit_code in EXIT_CODES.items() if exit_code == code), "a signal")
        self.stop_reason = f"interrupted by {name}"
        where = f"epoch {self.state.epoch}, step {self.state.global_step}"
        if distributed.active():
            self.resume_point.metrics.all_reduce()  # every rank's part of the epoch so far goes into rank 0's file
            self._signals.leave()
        if self._sharded or distributed.is_rank_zero():  # FSDP: every rank writes its shards
            self._write_resume_point(name, where)
        distributed.barrier()  # the other ranks exit once rank 0's checkpoint is complete
        raise SystemExit(code)

    def _write_resume_point(self, name: str, where: str) -> None:
        finite = self.run_dir is not None and weights_are_finite(self.model)  # under FSDP a collective
        if finite:  # FSDP: the other ranks write their shards too, quietly
            path = self.save_checkpoint(self.run_dir / "checkpoints" / "last.ckpt")  # type: ignore[operator]
        if not distributed.is_rank_zero():
            return
        if self.run_dir is None:
            print(f"gradloop: {name} at {where}: stopped; nothing saved (no run_dir)", file=sys.stderr)
        elif not finite:
            print(f"gradloop: {name} at {where}: weights are not finite, the last good checkpoint is kept", file=sys.stderr)
        else:
            print(f"gradloop: {name} at {where}: checkpoint written to {path}", file=sys.stderr)
            print(f"gradloop: resume with: {self.resume_command or layout.default_resume_hint(self.run_dir)}", file=sys.stderr)

    # ----------------------------------------------------------------------------- helpers
    def logged_names(self, has_val: bool) -> list[str]:
        """The names each epoch's logs hold (what a monitor may name), with or without validation data."""
        names = ["loss", *self.value_names, *(m.name for m in self.metrics)]
        if has_val:
            names += [f"val_{n}" for n in names]
        names += ["lr", "time"] + (["grad_norm"] if self.grad_clip_norm is not None else [])
        return names

    def _resume_settings(self, train: Batches, batch_size: int, shuffle: bool) -> dict[str, Any]:
        return {
            "batch_size": batch_size,
            "num_batches": length_or_none(train),
            "num_samples": train.dataset_size,
            "shuffle": shuffle,
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "precision": self.precision.name,
            "optimizer": type(self.optimizer).__name__,
            "loss": self.loss_name or _name_of(self._step.step_fn or self.loss_fn),
            "seed": self.seed,
        }

    def _prepare_run_dir(self) -> None:
        if self.run_dir is None or not distributed.is_rank_zero():
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.run_dir).close()  # a probe, gone once closed
        except OSError as err:
            raise ValueError(f"run_dir {str(self.run_dir)!r} cannot be written ({err.strerror}): choose a writable directory") from err


def _share_of_group(batches: Batches, batch: int, group_start: int, group_size: int) -> float | int:
    """Weights each batch by its samples, so k accumulated batches equal one k-times-larger batch.

    Equal batches give the plain int divisor k (bit-identical to the textbook `loss / k`).
    """
    if group_size == 1:
        return 1
    sizes = [batches.size_of_batch(b) for b in range(group_start, group_start + group_size)]
    if None in sizes or len(set(sizes)) == 1:
        return group_size
    return sizes[batch - group_start] / sum(sizes)  # type: ignore[operator, arg-type]


def _name_of(fn: Any) -> str:
    """What a user's loss or step is called in a checkpoint's settings (None: the model's own loss)."""
    return "model's own loss" if fn is None else getattr(fn, "__name__", type(fn).__name__)


def _count(meter: MetricSet, result: StepResult, batch: Any) -> torch.Tensor:
    """Adds a batch's loss, values and metrics to the running sums; returns the detached loss."""
    loss = result.loss.detach()
    outputs = result.outputs.detach() if isinstance(result.outputs, torch.Tensor) else result.outputs
    size = batch_size_of(result.targets if isinstance(result.targets, torch.Tensor) else batch)
    meter.update(loss, outputs, result.targets, size, result.values)
    return loss
