"""The model zoo: `mlp`, `cnn`, or the user's `"package.module:factory"`; and the user's
`[train] step = "package.module:function"`.

A factory is called as `factory(input_shape, num_outputs, **model.options)` and must return an
`nn.Module`. Built-in regression models end in `OutputScale`, so they learn standardized targets
yet predict (and report losses) in the data's own units. Both are imported from the config's
folder (the search paths), then the working directory, then sys.path.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..util import did_you_mean, first_line
from .config import ModelConfig
from .errors import UsageError
from .prepare import DataSpec

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


class Reshape(nn.Module):
    """Reshapes each sample to `shape` (flat 64 features -> 1x8x8 image)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class OutputScale(nn.Module):
    """`x * std + mean`, with the training targets' statistics as buffers (saved with the weights)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


def build_model(cfg: ModelConfig, spec: DataSpec, search_paths: Sequence[Path] = ()) -> nn.Module:
    """The model named in `cfg`, sized for `spec` (input shape, number of outputs)."""
    if cfg.name == "mlp":
        model = mlp(cfg, spec.input_shape, spec.num_outputs)
    elif cfg.name == "cnn":
        model = cnn(cfg, spec.input_shape, spec.num_outputs)
    else:
        return from_factory(cfg.name, spec.input_shape, spec.num_outputs, cfg.options, search_paths)
    if spec.task == "regression" and spec.target_mean is not None and spec.target_std is not None:
        model.append(OutputScale(spec.target_mean, spec.target_std))
    return model


def _dense(width: int, cfg: ModelConfig) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for size in cfg.hidden:
        layers.append(nn.Linear(width, size))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(ACTIVATIONS[cfg.activation]())
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = size
    return layers, width


def mlp(cfg: ModelConfig, input_shape: Sequence[int], num_outputs: int) -> nn.Sequential:
    """Flatten, then `hidden` dense layers (activation, optional batch norm and dropout), then the output layer."""
    layers, width = _dense(math.prod(input_shape), cfg)
    return nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, num_outputs))


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) for image-like inputs: (C, H, W), (H, W), or a square number of flat features."""
    shape = tuple(input_shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, *shape)  # type: ignore[return-value]
    side = math.isqrt(shape[0]) if len(shape) == 1 else 0
    if len(shape) == 1 and side > 1 and side * side == shape[0]:
        return (1, side, side)
    raise UsageError(
        f"model.name = 'cnn' needs image-shaped inputs (C, H, W), (H, W) or a square number of features; "
        f"the data has shape {shape}: use model.name = 'mlp'"
    )


def cnn(cfg: ModelConfig, input_shape: Sequence[int], num_outputs: int) -> nn.Sequential:
    """Conv blocks (conv, optional batch norm, activation, 2x2 pooling while the image is >= 2 pixels),
    then the `hidden` dense layers and the output layer. Adapts to 8x8 digits and 28x28 MNIST alike."""
    channels, height, width = image_shape(input_shape)
    kernels = cfg.kernel_size
    if len(kernels) not in (1, len(cfg.channels)):
        raise UsageError(f"model.kernel_size has {len(kernels)} entries for {len(cfg.channels)} model.channels: give one or one per block")
    layers: list[nn.Module] = []
    if tuple(input_shape) != (channels, height, width):
        layers.append(Reshape((channels, height, width)))
    for i, out in enumerate(cfg.channels):
        k = kernels[i] if len(kernels) > 1 else kernels[0]
        layers.append(nn.Conv2d(channels, out, k, padding=k // 2))
        height, width = height + 2 * (k // 2) - k + 1, width + 2 * (k // 2) - k + 1
        if height < 1 or width < 1:
            raise UsageError(f"model.kernel_size {k} is larger than the {input_shape} input allows: use smaller kernels")
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(ACTIVATIONS[cfg.activation]())
        if cfg.pool != "none" and min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
            height, width = height // 2, width // 2
        channels = out
    dense, features = _dense(channels * height * width, cfg)
    return nn.Sequential(*layers, nn.Flatten(), *dense, nn.Linear(features, num_outputs))


def import_callable(spec: str, key: str, kind: str, search_paths: Sequence[Path] = ()) -> Callable[..., Any]:
    """The callable `package.module:name` names (also found in `search_paths`, e.g. the config's folder).

    `key` is the config key that names it (`model.name`, `train.step`) and `kind` what it must be
    ("factory", "function"); a bad spec is a one-line UsageError naming both and the fix."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(
            f"{key} {spec!r} must look like 'package.module:{kind}', e.g. 'mycode:{_example(kind)}' for a {kind} "
            f"{_example(kind)} in mycode.py beside the config file"
        )
    for folder in (*search_paths, Path.cwd()):
        if str(folder) not in sys.path:
            sys.path.append(str(folder))
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the user's module failing on import
        fix = (
            f"put {module_name.replace('.', '/')}.py beside the config file or on PYTHONPATH"
            if isinstance(err, ModuleNotFoundError) and err.name is not None and module_name.startswith(err.name)
            else "fix the error in the module"
        )
        raise UsageError(f"{key} {spec!r}: cannot import {module_name!r}: {type(err).__name__}: {first_line(err)}: {fix}") from None
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            names = [n for n in dir(found) if not n.startswith("_")]
            raise UsageError(
                f"{key} {spec!r}: module {module_name!r} has no attribute {attr!r}{did_you_mean(part, names)}: "
                f"name a {kind} defined in {module_name!r}"
            )
        found = getattr(found, part)
    if not callable(found):
        raise UsageError(f"{key} {spec!r}: {attr!r} is not callable (it is of type {type(found).__name__}): name a {kind}")
    return found


def _example(kind: str) -> str:
    return "make_model" if kind == "factory" else "my_step"


def resolve_step(spec: str | None, search_paths: Sequence[Path] = ()) -> Callable[..., Any] | None:
    """`[train] step`: the user's `step(model, batch)` function (None when unset)."""
    return None if spec is None else import_callable(spec, "train.step", "function", search_paths)


def from_factory(spec: str, input_shape: Sequence[int], num_outputs: int, options: dict, search_paths: Sequence[Path] = ()) -> nn.Module:
    """Imports `package.module:factory` (also from `search_paths`, e.g. the config's folder) and calls it."""
    _, _, attr = spec.partition(":")
    factory = import_callable(spec, "model.name", "factory", search_paths)
    call = ", ".join([f"input_shape={tuple(input_shape)}", f"num_outputs={num_outputs}", *(f"{k}={v!r}" for k, v in options.items())])
    try:
        model = factory(tuple(input_shape), num_outputs, **options)
    except Exception as err:
        raise UsageError(f"model.name {spec!r}: calling {attr}({call}) failed: {type(err).__name__}: {first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model.name {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
