"""The run configuration: a typed, validated schema with one-line errors.

Sections: `[data]`, `[model]`, `[train]`, `[callbacks.<name>]`. Unknown keys, wrong types and
out-of-range values are a `UsageError` naming the key (with a "did you mean" for typos).
Reading, `--set` overrides and writing TOML live in `tomlfile.py`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..compilation import compile_options
from ..data.devices import resolve_precision
from ..names.losses import resolve_loss
from ..names.metrics import resolve_metric
from ..names.optim import check_optimizer_args
from ..trainer import STRATEGIES
from ..util import did_you_mean
from .errors import UsageError
from .tomlfile import apply_overrides, dumps_toml, read_toml

BUNDLED = ("digits", "iris", "wine", "breast_cancer", "diabetes")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu")


class _Section(BaseModel):
    # strict: a TOML string is never silently turned into a number (ints still widen to floats)
    model_config = ConfigDict(extra="forbid", strict=True)


class DataConfig(_Section):
    """Where the samples come from and how they are split and scaled."""

    name: str | None = Field(None, description="a bundled scikit-learn dataset: digits, iris, wine, breast_cancer or diabetes")
    path: str | None = Field(
        None, description="a .csv file, an .npz file (arrays X and y) or an MNIST-style IDX folder; relative to the config file"
    )
    target: str = Field("target", description="the CSV column holding the labels or values")
    val_path: str | None = Field(None, description="a separate validation file, in the format of `path` (instead of val_split)")
    test_path: str | None = Field(None, description="a separate test file, in the format of `path` (`gradloop eval` reports it)")
    val_split: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of the samples held out for validation (stratified for classification; 0: none)"
    )
    batch_size: int = Field(64, ge=1, description="samples per batch, for training and evaluation")
    standardize: bool = Field(True, description="scale each feature to mean 0 and std 1, fitted on the training split only")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto", description="auto: classification for integer or string labels, regression for float targets"
    )

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str | None) -> str | None:
        if name is not None and name not in BUNDLED:
            raise ValueError(f"unknown bundled dataset {name!r}{did_you_mean(name, BUNDLED)}; choose one of {', '.join(BUNDLED)}")
        return name

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if (self.name is None) == (self.path is None):
            raise ValueError(f"give exactly one of data.name (bundled: {', '.join(BUNDLED)}) or data.path (a CSV, NPZ or IDX folder)")
        if self.val_path is not None and "val_split" in self.model_fields_set and self.val_split > 0:
            raise ValueError("data.val_path and data.val_split are both given: keep one of them")
        return self


_CNN_ONLY = ("channels", "kernel_size", "pool")


class ModelConfig(_Section):
    """`mlp`, `cnn`, or `"package.module:factory"`, called as `factory(input_shape, num_outputs, **options)`."""

    name: str = Field("mlp", description='"mlp", "cnn", or "package.module:factory" (a module beside the config file works)')
    hidden: list[int] = Field(default_factory=lambda: [128], description="widths of the hidden dense layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability after each hidden dense layer (0: none)")
    activation: str = Field("relu", description=f"activation after each hidden layer: {', '.join(ACTIVATIONS)}")
    batch_norm: bool = Field(False, description="batch normalization in each hidden layer (and conv block)")
    channels: list[int] = Field(default_factory=lambda: [32, 64], description="cnn: output channels, one conv block per entry")
    kernel_size: list[int] = Field(default_factory=lambda: [3], description="cnn: one kernel size for every block, or one per block")
    pool: Literal["max", "avg", "none"] = Field("max", description="cnn: 2x2 pooling after each block")
    options: dict[str, Any] = Field(default_factory=dict, description="a factory's keyword arguments (a TOML table)")

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in ("mlp", "cnn") and ":" not in name:
            raise ValueError(f"unknown model {name!r}{did_you_mean(name, ('mlp', 'cnn'))}: use 'mlp', 'cnn' or 'package.module:factory'")
        return name

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, name: str) -> str:
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}{did_you_mean(name, ACTIVATIONS)}; choose one of {', '.join(ACTIVATIONS)}")
        return name

    @field_validator("kernel_size", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("hidden", "channels", "kernel_size")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"every entry must be a positive integer; got {values}")
        return values


class TrainConfig(_Section):
    """Optimizer, loss, metrics and loop settings, passed to `gl.Trainer`."""

    optimizer: str = Field("adam", description="an optimizer name: sgd, adam, adamw, rmsprop, adagrad, adadelta, adamax, nadam, radam")
    lr: float = Field(1e-3, gt=0.0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="the optimizer's weight_decay (0: not passed)")
    momentum: float | None = Field(None, ge=0.0, description="the optimizer's momentum (sgd, rmsprop); unset: torch's default")
    loss: str | None = Field(None, description="a loss name; default: cross_entropy (classification) or mse (regression); none with a step")
    metrics: list[str] | None = Field(
        None, description="metric names; default: accuracy (classification) or mae, r2 (regression); none with a step"
    )
    step: str | None = Field(
        None, description='"package.module:function": gl.Trainer(step=...), step(model, batch) -> loss tensor or dict with "loss"'
    )
    max_epochs: int = Field(20, ge=1, description="epochs to train, counted from the run's start (a resume goes on to it)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps as well")
    seed: int = Field(0, ge=0, description="seeds python, numpy and torch, the model's initial weights and the validation split")
    precision: str = Field("32", description='"32", "bf16-mixed" or "16-mixed" (or an alias gl.Trainer accepts, stored by its name)')
    device: str = Field("auto", description='"auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps"')
    grad_clip_norm: float | None = Field(None, gt=0.0, description="clip the total gradient norm to this value (logged as grad_norm)")
    accumulate_grad_batches: int = Field(1, ge=1, description="batches whose gradients are summed into one optimizer step")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (unset: torch's choice)")
    strategy: Literal[STRATEGIES] = Field(  # gl.Trainer's names
        "auto", description='under torchrun: "auto" or "ddp" (DistributedDataParallel), "fsdp" (FSDP2, sharded checkpoints)'
    )
    compile: bool | dict[str, Any] = Field(
        False, description='true, or a table of torch.compile options: {mode = "max-autotune"}; checkpoints keep the plain keys'
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_name(cls, value: Any) -> Any:
        return resolve_precision(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_options(cls, value: Any) -> Any:
        if not isinstance(value, (bool, dict)):
            raise ValueError(f"must be true, false or a table of torch.compile options; got {value!r}")
        compile_options(value)  # what gl.Trainer checks: the option names torch.compile accepts
        return value

    @model_validator(mode="after")
    def _optimizer_args(self) -> "TrainConfig":
        try:
            check_optimizer_args(self.optimizer, self.lr, self.optimizer_options())  # what gl.Trainer checks
        except (ValueError, TypeError) as err:
            raise ValueError(f"train.optimizer: {err}") from None
        return self

    def optimizer_options(self) -> dict[str, Any]:
        """The optimizer's keyword arguments beyond `lr` (gl.Trainer's `optimizer_options`)."""
        options: dict[str, Any] = {"weight_decay": self.weight_decay} if self.weight_decay else {}
        return options | ({"momentum": self.momentum} if self.momentum is not None else {})

    def trainer_options(self) -> dict[str, Any]:
        """The keyword arguments of gl.Trainer that this section sets: every key but the optimizer's own
        (in `optimizer_options`), `threads` (set for the process) and `step` (resolved elsewhere)."""
        options = self.model_dump(exclude={"weight_decay", "momentum", "threads", "step"})
        return options | {"optimizer_options": self.optimizer_options() or None}

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str | None) -> str | None:
        if name is not None:
            resolve_loss(name)  # raises ValueError naming the choices
        return name

    @field_validator("step")
    @classmethod
    def _step_spec(cls, spec: str | None) -> str | None:
        if spec is not None:
            module, _, function = spec.partition(":")
            if not module or not function:
                raise ValueError(
                    f"train.step {spec!r} must look like 'package.module:function', e.g. 'mycode:my_step' for a function "
                    "my_step(model, batch) in mycode.py beside the config file"
                )
        return spec

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            for name in names:
                resolve_metric(name)
        return names


class EarlyStoppingConfig(_Section):
    """`gl.EarlyStopping`; the monitor defaults to val_loss (loss without validation data)."""

    monitor: str | None = Field(None, description="the logged value to watch; unset: val_loss (loss without validation data)")
    min_delta: float = Field(0.0, ge=0.0, description="an improvement must beat the best value by more than this")
    patience: int = Field(0, ge=0, description="epochs without improvement before training stops")
    mode: Literal["auto", "min", "max"] = Field("auto", description="min or max is better; auto: from the monitor's name")
    baseline: float | None = Field(None, description="the value to beat before the wait is reset")
    restore_best_weights: bool = Field(False, description="give the model the best epoch's weights back when training ends")
    start_from_epoch: int = Field(0, ge=0, description="epochs (counted from 0) before which nothing is monitored")


class ReduceLROnPlateauConfig(_Section):
    """`gl.ReduceLROnPlateau` (torch's scheduler of the same name)."""

    monitor: str | None = Field(None, description="the logged value to watch; unset: val_loss (loss without validation data)")
    factor: float = Field(0.1, gt=0.0, lt=1.0, description="the LR is multiplied by this when the monitor stops improving")
    patience: int = Field(10, ge=0, description="epochs without improvement before the LR drops")
    mode: Literal["auto", "min", "max"] = Field("auto", description="min or max is better; auto: from the monitor's name")
    min_delta: float = Field(1e-4, ge=0.0, description="an improvement must beat the best value by more than this (absolute)")
    cooldown: int = Field(0, ge=0, description="epochs to wait after a drop before counting again")
    min_lr: float = Field(0.0, ge=0.0, description="the LR never drops below this")


class ModelCheckpointConfig(_Section):
    """`gl.ModelCheckpoint`: replaces the default one a run directory gets."""

    monitor: str | None = Field(None, description="what best.ckpt is best at; unset: val_loss (loss without validation data)")
    mode: Literal["auto", "min", "max"] = Field("auto", description="min or max is better; auto: from the monitor's name")
    save_best: bool = Field(True, description="write checkpoints/best.ckpt whenever the monitor improves")
    save_last: bool = Field(True, description="keep checkpoints/last.ckpt the newest state (what `gradloop resume` reads)")
    keep: int = Field(3, ge=0, description="periodic `epoch-<E>-step-<N>.ckpt` files to keep, the newest (0: none)")
    every_n_epochs: int = Field(1, ge=1, description="write a periodic checkpoint every this many epochs")


class TerminateOnNaNConfig(_Section):
    """`gl.TerminateOnNaN` (no settings)."""


class MLflowConfig(_Section):
    """`gl.MLflowLogger`: the run's settings, metrics and files go to MLflow (needs `pip install gradloop[mlflow]`)."""

    experiment: str | None = Field(None, description='the MLflow experiment (default: MLFLOW_EXPERIMENT_NAME or MLflow\'s "Default")')
    tracking_uri: str | None = Field(None, description="where MLflow stores runs (default: MLFLOW_TRACKING_URI or MLflow's default)")
    run_name: str | None = Field(None, description="the MLflow run's name (default: MLflow picks one)")


class CallbacksConfig(_Section):
    """A table present turns its callback on."""

    early_stopping: EarlyStoppingConfig | None = Field(None, description="gl.EarlyStopping")
    reduce_lr_on_plateau: ReduceLROnPlateauConfig | None = Field(None, description="gl.ReduceLROnPlateau")
    model_checkpoint: ModelCheckpointConfig | None = Field(None, description="gl.ModelCheckpoint (replaces the default one)")
    terminate_on_nan: TerminateOnNaNConfig | None = Field(None, description="gl.TerminateOnNaN")
    mlflow: MLflowConfig | None = Field(None, description="gl.MLflowLogger (needs gradloop[mlflow])")


class Config(_Section):
    """A whole run: what `gradloop fit` reads and what it writes to RUN_DIR/config.toml."""

    data: DataConfig = Field(description="where the samples come from (required)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the Trainer's settings")
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig, description="callbacks, one table each")

    def resolved(self) -> dict[str, Any]:
        """The settings as a plain dict, without unset optional keys and keys the choices make moot
        (cnn-only keys for an mlp, `target` for a bundled dataset, `val_split` beside `val_path`)."""
        raw = self.model_dump(exclude_none=True)
        if self.model.name == "mlp":
            unused: tuple[str, ...] = (*_CNN_ONLY, "options")
        elif self.model.name == "cnn":
            unused = ("options",)
        else:  # a factory gets `options` only
            unused = tuple(k for k in raw["model"] if k not in ("name", "options"))
        raw["model"] = {k: v for k, v in raw["model"].items() if k not in unused}
        if self.data.name is not None:
            raw["data"].pop("target", None)
        if self.data.val_path is not None:
            raw["data"].pop("val_split", None)  # unused, and both together are an error
        if not raw["callbacks"]:
            del raw["callbacks"]
        return raw

    def to_toml(self) -> str:
        """The resolved settings as TOML: what RUN_DIR/config.toml holds."""
        return dumps_toml(self.resolved())


# --------------------------------------------------------------------------------- validation
def validate(raw: dict[str, Any], source: str) -> Config:
    """Validates a raw config dict; the first problem becomes a one-line UsageError."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        problems = err.errors(include_url=False)
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise UsageError(f"{source}: {describe(problems[0])}{more}") from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Reads, overrides and validates a config file."""
    return validate(apply_overrides(read_toml(path), overrides), str(path))


# --------------------------------------------------------------------------------- messages
_EXPECTED = {
    "float_type": "a number",
    "int_type": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def describe(problem: dict[str, Any]) -> str:
    """One pydantic error as `key: what is wrong`."""
    loc = [p for p in problem["loc"] if isinstance(p, int) or not _is_type_tag(p)]
    key = _dotted(loc)
    kind, value = problem["type"], problem.get("input")
    if kind == "extra_forbidden":
        parent, name = loc[:-1], str(loc[-1])
        fields = _fields_at(parent)
        what = "section" if _dotted(parent) in ("", "callbacks") else "key"
        hint = did_you_mean(name, fields, prefix=f"{_dotted(parent)}." if parent else "")
        return f"unknown {what} {key!r}{hint}; {_dotted(parent) or 'the config'} accepts: {', '.join(fields)}"
    if kind == "missing":
        if key == "data":
            return "missing [data] section: set data.name (a bundled dataset) or data.path (a file)"
        return f"missing key {key!r}"
    if kind == "value_error":
        message = str(problem.get("ctx", {}).get("error", problem["msg"]))
        return message if key == "" or key in message else f"{key}: {message}"
    if kind in _EXPECTED:
        return f"{key} must be {_EXPECTED[kind]}; got {_show(value)}"
    message = problem["msg"].replace("Input should be", "must be")
    return f"{key} {message}; got {_show(value)}"


def _is_type_tag(part: Any) -> bool:
    text = str(part)
    return "[" in text or text in ("int", "float", "str", "bool", "function-after", "function-before")


def _dotted(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _fields_at(loc: Sequence[Any]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        inner = section_model(field.annotation) if field else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The table a field holds: `DataConfig` for `DataConfig` and for `EarlyStoppingConfig | None`; None for a value."""
    for candidate in (annotation, *get_args(annotation)):
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)
