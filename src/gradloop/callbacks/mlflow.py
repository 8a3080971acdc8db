"""MLflow tracking: the run's settings as params, each epoch's logs as metrics, its files as artifacts.

mlflow is optional (`pip install gradloop[mlflow]`): it is imported when an `MLflowLogger` is built.
The callback speaks to the tracking server through `MlflowClient` with an explicit run id, never
through mlflow's global "active run", so two trainers in one process, or a fit resumed in the same
process, each keep to their own run.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..data import fsdp
from ..persistence.weights import export_weights
from ..util import flatten, is_number, weights_are_finite
from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer

ARTIFACTS = ("config.toml", "metrics.csv", "curves.png")  # run-dir files uploaded at the end, when present


class MLflowLogger(Callback):
    """Logs a fit to an MLflow run: params once, every epoch's float logs as metrics (`step=epoch`),
    and at the end `config.toml`, `metrics.csv`, `curves.png` (from the run dir, when present) and
    `model.safetensors` (the final weights, after `restore_best_weights`).

    Params are the Trainer's settings (optimizer, lr, loss, metrics, batch size, epochs, precision,
    seed, ...) and `params` (a nested dict is flattened: `{"train": {"lr": 0.1}}` is `train.lr`; the
    command line passes its whole config this way). `experiment` is the experiment's name (created
    when missing; None: `MLFLOW_EXPERIMENT_NAME` or MLflow's "Default"), `tracking_uri` the server
    or database (None: `MLFLOW_TRACKING_URI` or MLflow's default), `run_name` the run's name.

    Resume: the run id is part of this callback's state, so it is saved in every checkpoint, and a
    resumed fit reopens that run instead of starting a second one. The run's metric history mirrors
    `trainer.history`: epochs the run already has (a process killed after logging an epoch but
    before its checkpoint) are not logged twice; epochs it lacks are logged when the run opens.
    A run that ends by SIGTERM/SIGINT (or an exception that ends the program) is marked KILLED
    (FAILED) when the process exits, which tells the truth in the MLflow UI; resuming sets it
    RUNNING again and the end of the fit FINISHED.

    Cost: one request per epoch, off the training step; the upload and one extra export of the
    weights at the end.
    """

    priority = 15  # after the loggers and plots (10), whose files it uploads; before checkpoints (20)
    rank_zero_only = True  # under torchrun: rank 0 alone talks to the tracking server

    def __init__(
        self,
        experiment: str | None = None,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in (("experiment", experiment), ("tracking_uri", tracking_uri), ("run_name", run_name)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None; received: {name}={value!r}")
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of settings or None; received: params={params!r}")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ImportError("MLflowLogger needs mlflow: pip install gradloop[mlflow]") from err
        self.experiment, self.tracking_uri, self.run_name = experiment, tracking_uri, run_name
        self.params = flatten(params or {})
        self._client_class = MlflowClient
        self._client: Any = None
        self.run_id: str | None = None  # saved in checkpoints: a resumed fit reopens this run
        self._open = False  # the run is RUNNING on behalf of this fit
        self._logged_epochs: set[int] = set()
        self._trainer: "Trainer | None" = None

    # ------------------------------------------------------------------ state (in checkpoints)
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: "Trainer") -> None:
        # A resume hands the run id back through load_state_dict, after this hook: the run opens
        # at the first epoch (or at the end, when there is nothing left to train).
        self._close(self._ended_status())  # a run left open by an earlier fit of this process that raised
        self.run_id = None
        self._trainer = trainer
        self._client = self._client_class(tracking_uri=self.tracking_uri)

    def on_epoch_start(self, trainer: "Trainer") -> None:
        self._start(trainer)

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, float]) -> None:
        self._start(trainer)
        self._log_epochs([(trainer.state.epoch, logs)])

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._start(trainer)
        self._log_artifacts(trainer)
        self._close("FINISHED")

    # ------------------------------------------------------------------ the run
    def _start(self, trainer: "Trainer") -> None:
        """Creates the run, or reopens the one a resumed checkpoint names; logs what it lacks. Once per fit."""
        from mlflow.exceptions import MlflowException

        if self._open:
            return
        client = self._client
        if self.run_id is None:
            tags = {"gradloop.run_dir": str(trainer.run_dir)} if trainer.run_dir is not None else None
            run = client.create_run(self._experiment_id(), tags=tags, run_name=self.run_name)
            self.run_id = run.info.run_id
            logged: dict[str, str] = {}
            self._logged_epochs = set()
        else:
            try:
                run = client.get_run(self.run_id)
            except MlflowException:
                raise ValueError(
                    f"the checkpoint's MLflow run {self.run_id} is not in {client.tracking_uri}: "
                    "resume with the tracking_uri (and experiment) the run was started with"
                ) from None
            client.update_run(self.run_id, status="RUNNING")
            logged = dict(run.data.params)
            self._logged_epochs = {int(m.step) for m in client.get_metric_history(self.run_id, "loss")}
        self._open = True
        atexit.register(self._end_with_process)
        self._log_params({**trainer_params(trainer), **self.params}, logged)
        self._log_epochs(enumerate(trainer.history.epochs))

    def _experiment_id(self) -> str:
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
        found = self._client.get_experiment_by_name(name)
        if found is None:
            return self._client.create_experiment(name)
        if found.lifecycle_stage != "active":
            raise ValueError(f"MLflow experiment {name!r} is deleted: restore it in MLflow or choose another experiment name")
        return found.experiment_id

    def _log_params(self, params: dict[str, Any], logged: dict[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        values = {key: str(value)[:MAX_PARAM_VAL_LENGTH] for key, value in params.items() if value is not None}
        changed = [f"{k}={logged[k]} (now {v})" for k, v in values.items() if k in logged and logged[k] != v]
        if changed:  # MLflow params cannot change once logged
            print(f"gradloop: MLflow run {self.run_id} keeps its params {', '.join(changed)}", file=sys.stderr)
        new = [Param(key, value) for key, value in values.items() if key not in logged]
        self._client.log_batch(self.run_id, params=new)  # in requests of at most 100 params, as the server takes them

    def _log_epochs(self, epochs: Iterable[tuple[int, dict[str, Any]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for epoch, logs in epochs:
            if epoch in self._logged_epochs:
                continue
            self._logged_epochs.add(epoch)
            metrics += [Metric(name, float(v), now, epoch) for name, v in logs.items() if is_number(v)]
        self._client.log_batch(self.run_id, metrics=metrics)  # none: no request

    def _log_artifacts(self, trainer: "Trainer") -> None:
        if trainer.run_dir is not None:
            for name in ARTIFACTS:
                if (trainer.run_dir / name).is_file():
                    self._client.log_artifact(self.run_id, str(trainer.run_dir / name))
        if fsdp.is_sharded(trainer.model):  # gathering the shards takes every rank; this runs on rank 0 alone
            print("gradloop: MLflowLogger logs no model artifact under strategy='fsdp' (see run_dir/model.safetensors)", file=sys.stderr)
        elif weights_are_finite(trainer.model):
            # the trainer writes run_dir/model.safetensors after on_fit_end: the same export, done here
            with tempfile.TemporaryDirectory() as folder:
                self._client.log_artifact(self.run_id, str(export_weights(trainer.model, Path(folder) / "model.safetensors")))

    def _close(self, status: str) -> None:
        if self._open and self.run_id is not None:
            self._open = False
            atexit.unregister(self._end_with_process)
            self._client.set_terminated(self.run_id, status=status)

    def _ended_status(self) -> str:
        """How a fit that did not reach on_fit_end ended: KILLED by a signal, else FAILED (an exception)."""
        reason = self._trainer.stop_reason if self._trainer is not None else None
        return "KILLED" if reason is not None and reason.startswith("interrupted") else "FAILED"

    def _end_with_process(self) -> None:
        """At exit with the run still open (a signal or an exception ended the fit)."""
        try:
            self._close(self._ended_status())
        except Exception as err:  # the process is ending: say it, do not mask its exit status
            print(f"gradloop: could not mark MLflow run {self.run_id} as ended: {err}", file=sys.stderr)


def trainer_params(trainer: "Trainer") -> dict[str, Any]:
    """What an MLflow run records about a fit: the Trainer's settings, as `fit` resolved them."""
    group = trainer.optimizer.param_groups[0]
    return {
        **trainer.fit_settings,
        "lr": group.get("initial_lr", group["lr"]),  # a scheduler keeps the starting LR there
        "metrics": ", ".join(m.name for m in trainer.metrics),
        "max_epochs": trainer.max_epochs,
        "max_steps": trainer.max_steps,
        "grad_clip_norm": trainer.grad_clip_norm,
        "device": str(trainer.device),
        "model": type(trainer.model).__name__,
    }
