"""One batch through the model: the default step (forward, then the loss) or the user's own.

A batch is what the data yields, on the device, its structure intact: `(inputs, targets)` for
in-memory pairs and loaders of pairs, a dict for dict data. The default step reads it as Keras and
the Hugging Face Trainer do:

    (x, y)            model(x)              loss(output, y)
    ((x1, x2), y)     model(x1, x2)         loss(output, y)
    ({"a": a}, y)     model(a=a)            loss(output, y)
    {"labels": y,..}  model(**rest)         loss(output, y)          with a loss
    {...}             model(**batch)        output.loss / ["loss"]   with loss=None; metrics on .logits

`step(model, batch)` replaces forward and loss for training and evaluation: it returns the loss
tensor, or a mapping with "loss", other scalar tensors (logged under their keys) and optionally
"outputs" and "targets" (what `metrics` are computed on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .data.devices import leaves
from .names.losses import LossFn
from .util import first_line

StepFn = Callable[[nn.Module, Any], Any]
PredictFn = Callable[[nn.Module, Any], Any]
LABELS = "labels"


@dataclass
class StepResult:
    """The loss (not detached), the other scalars to log, and what metrics compare (None: no metrics)."""

    loss: torch.Tensor
    values: dict[str, torch.Tensor]
    outputs: Any
    targets: Any


class Step:
    """Runs one batch: `step(model, batch)` if given, else the default forward and loss."""

    def __init__(
        self, loss_fn: LossFn | None, loss_name: str | None, step_fn: StepFn | None = None, predict_fn: PredictFn | None = None
    ) -> None:
        self.loss_fn, self.loss_name, self.step_fn, self.predict_fn = loss_fn, loss_name, step_fn, predict_fn

    @property
    def custom(self) -> bool:
        return self.step_fn is not None

    def __call__(self, model: nn.Module, batch: Any) -> StepResult:
        if self.step_fn is not None:
            return _result_of_step(self.step_fn(model, batch))
        inputs, targets = self.split(batch, needs_targets=self.loss_fn is not None)
        output = call_model(model, inputs)
        if self.loss_fn is None:
            return StepResult(own_loss(output), {}, logits_of(output), targets)
        return StepResult(self.loss(output, targets), {}, output, targets)

    def predict(self, model: nn.Module, batch: Any) -> Any:
        """What `predict` returns for one batch: `predict_step(model, batch)`, else the model's output
        for the batch's inputs (for a model that computes its own loss, its logits)."""
        if self.predict_fn is not None:
            return self.predict_fn(model, batch)
        inputs, _ = self.split(batch, needs_targets=False)
        try:
            output = call_model(model, inputs)
        except TypeError as err:  # the model wants more (or other) arguments than the batch's first element
            raise TypeError(
                f"predict calls the model with the first element of each batch, {describe(inputs)}: {first_line(err)}. "
                "For a model with several inputs pass predict(((X1, X2),)) or a dict predict({'a': A, 'b': B})"
            ) from err
        return logits_of(output) if has_logits(output) else output

    def split(self, batch: Any, needs_targets: bool) -> tuple[Any, Any]:
        """`(inputs, targets)` of a batch as the default step reads it (targets None when absent; a model
        that computes its own loss gets the labels among its inputs)."""
        if isinstance(batch, Mapping):
            if needs_targets and LABELS not in batch:
                raise ValueError(
                    f"a dict batch needs a {LABELS!r} key for the loss; it has {', '.join(map(repr, batch))}: "
                    f"add the targets as {LABELS!r}, or pass loss=None for a model that computes its own loss"
                )
            inputs = dict(batch) if self.loss_fn is None else {k: v for k, v in batch.items() if k != LABELS}
            return inputs, batch.get(LABELS)
        if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
            if len(batch) >= 2:
                return batch[0], batch[1]
            if len(batch) == 1:
                batch = batch[0]
        if needs_targets:
            raise ValueError(
                f"each batch must be (inputs, targets[, ...]) or a dict with {LABELS!r} to train or evaluate; the data "
                f"gave {describe(batch)}: make the Dataset return (x, y) pairs, or pass step=... to read it yourself"
            )
        return batch, None

    def loss(self, output: Any, targets: Any) -> torch.Tensor:
        assert self.loss_fn is not None
        try:
            return self.loss_fn(output, targets)
        except (IndexError, RuntimeError) as err:
            hint = ""
            if "out of bounds" in str(err) and isinstance(output, torch.Tensor) and output.ndim >= 2:
                hint = f": labels must lie in [0, {output.shape[1]}) for a model with {output.shape[1]} outputs"
            raise ValueError(
                f"the loss failed on outputs {describe(output)} and targets {describe(targets)}: {first_line(err)}{hint}"
            ) from err


def call_model(model: nn.Module, inputs: Any) -> Any:
    """`model(x)`, `model(*inputs)` for a tuple or list, `model(**inputs)` for a dict.

    >>> def model(left, right=0):
    ...     return left - right
    >>> call_model(model, 5), call_model(model, (5, 2)), call_model(model, {"left": 5, "right": 3})
    (5, 3, 2)
    """
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)) and not hasattr(inputs, "_fields"):
        return model(*inputs)
    return model(inputs)


def own_loss(output: Any) -> torch.Tensor:
    """The loss a model computed itself: `output.loss` or `output["loss"]` (the Hugging Face convention)."""
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(
            f"loss=None means the model computes its own loss, but it returned {describe(output)} without a 'loss': "
            "return output.loss / output['loss'] (give the model the labels), or pass a loss"
        )
    return loss


def has_logits(output: Any) -> bool:
    return (isinstance(output, Mapping) and "logits" in output) or hasattr(output, "logits")


def logits_of(output: Any) -> Any:
    """`output.logits` / `output["logits"]` when the output has them, else the output itself (None for a bare loss)."""
    if isinstance(output, Mapping):
        return output.get("logits")
    return getattr(output, "logits", None if not isinstance(output, torch.Tensor) else output)


def _result_of_step(returned: Any) -> StepResult:
    if isinstance(returned, torch.Tensor):
        return StepResult(_scalar("loss", returned), {}, None, None)
    if not isinstance(returned, Mapping):
        raise TypeError(f"step(model, batch) must return the loss tensor or a dict with 'loss'; it returned {describe(returned)}")
    if "loss" not in returned:
        raise ValueError(f"the dict step(model, batch) returned has no 'loss'; it has {', '.join(map(repr, returned))}")
    values = {}
    for name, value in returned.items():
        if name in ("loss", "outputs", "targets"):
            continue
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"step(model, batch) returned a value under {name!r}: name logged values like Python identifiers")
        values[name] = _scalar(name, value).detach()
    return StepResult(_scalar("loss", returned["loss"]), values, returned.get("outputs"), returned.get("targets"))


def _scalar(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"step(model, batch) returned {name}={describe(value)}: every logged value must be a scalar tensor")
    if value.numel() != 1:
        raise ValueError(f"step(model, batch) returned {name} of shape {tuple(value.shape)}: it must be a scalar (reduce it with .mean())")
    return value.reshape(())


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (in structure order).

    >>> batch_size_of(({"ids": torch.zeros(8, 5)}, torch.zeros(8)))
    8
    """
    tensor = next(leaves(batch), None)
    if tensor is None or tensor.ndim == 0:
        raise ValueError(f"cannot tell how many samples the batch {describe(batch)} holds: it needs a tensor with a batch dimension")
    return int(tensor.shape[0])


def describe(tree: Any) -> str:
    """Shapes and dtypes, structure kept: `{'input_ids': (2, 7) int64, 'labels': (2,) int64}`.

    >>> print(describe(((torch.zeros(2, 3), torch.zeros(2, 1)), torch.zeros(2, dtype=torch.long))))
    (((2, 3) float32, (2, 1) float32), (2,) int64)
    """
    if isinstance(tree, torch.Tensor):
        return f"{tuple(tree.shape)} {str(tree.dtype).replace('torch.', '')}"
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (list, tuple)):
        inner = ", ".join(describe(v) for v in tree)
        return f"({inner})" if isinstance(tree, tuple) else f"[{inner}]"
    return type(tree).__name__


def concatenate(outputs: list[Any]) -> Any:
    """Per-batch predictions as one result on the CPU: tensors concatenated, tuples and dicts field by field.

    >>> out = concatenate([{"logits": torch.zeros(2, 3)}, {"logits": torch.zeros(1, 3)}])
    >>> out["logits"].shape
    torch.Size([3, 3])
    """
    first = outputs[0]
    if isinstance(first, dict):
        return {key: concatenate([o[key] for o in outputs]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(concatenate([o[i] for o in outputs]) for i in range(len(first)))
    predictions = torch.cat(outputs).cpu()
    if predictions.dtype in (torch.float16, torch.bfloat16):  # autocast's dtype: numpy cannot take bfloat16
        predictions = predictions.float()
    return predictions
