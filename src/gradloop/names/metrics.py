"""Metrics: names -> functions, and on-device accumulators read once per epoch.

Every accumulator keeps running sums as tensors on the training device and a sample count on the
host, so updating costs no host-device sync. `MetricSet.compute()` reads all sums with one
`.tolist()`: the single sync of an epoch. Under torchrun that read is preceded by one all-reduce
of the same values (sums and counts), so every rank reports the numbers of the whole data.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..data import distributed
from . import metric_objects

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
RESERVED_NAMES = ("loss", "lr", "time", "epoch", "grad_norm")


def _class_predictions(outputs: torch.Tensor, targets: torch.Tensor, logits: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if outputs.ndim == targets.ndim + 1:  # (N, C, ...) scores vs (N, ...) class indices
        return outputs.argmax(dim=1), targets
    if outputs.shape == targets.shape and outputs.ndim >= 2 and outputs.shape[1] > 1:  # one-hot targets
        return outputs.argmax(dim=1), targets.argmax(dim=1)
    threshold = 0.0 if logits else 0.5  # binary: one score per sample
    return (outputs.reshape(targets.shape) > threshold).long(), (targets > 0.5).long()


def accuracy(outputs: torch.Tensor, targets: torch.Tensor, logits: bool = True) -> torch.Tensor:
    """Fraction of correct predictions: argmax for class scores, a threshold for one binary score."""
    predicted, expected = _class_predictions(outputs, targets, logits)
    return (predicted == expected).float().mean()


def top_k_accuracy(outputs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    top = outputs.topk(min(k, outputs.shape[1]), dim=1).indices
    return (top == targets.unsqueeze(1)).any(dim=1).float().mean()


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.reshape(targets.shape) - targets).abs().float().mean()


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.reshape(targets.shape) - targets).float().pow(2).mean()


class Metric:
    """Accumulates per-batch sums on the device; `finalize` turns the read sums into one float."""

    size = 1  # number of running sums

    def __init__(self, name: str) -> None:
        self.name = name

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
        raise NotImplementedError

    def finalize(self, sums: Sequence[float], count: int) -> float:
        return sums[0] / count

    def check(self, outputs: torch.Tensor, targets: torch.Tensor, n: int) -> None:
        """Raises if the metric cannot take these outputs and targets (what `fit` tries on two samples first)."""
        self.batch_sums(outputs, targets, n)


class Accuracy(Metric):
    """Counts correct predictions exactly (an integer sum), read as a fraction."""

    def __init__(self, name: str = "accuracy", logits: bool = True) -> None:
        super().__init__(name)
        self.logits = logits

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
        predicted, expected = _class_predictions(outputs, targets, self.logits)
        return (predicted == expected).sum().reshape(1)

    def finalize(self, sums: Sequence[float], count: int) -> float:
        return sums[0] / count if count else math.nan


class MeanMetric(Metric):
    """Sample-weighted mean of a function that returns the batch mean."""

    def __init__(self, name: str, fn: MetricFn) -> None:
        super().__init__(name)
        self.fn = fn

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
        value = self.fn(outputs, targets)
        if not isinstance(value, torch.Tensor):
            value = torch.tensor(float(value))
        if value.numel() != 1:
            raise ValueError(f"metric {self.name!r} must return one number per batch, got shape {tuple(value.shape)}")
        return value.detach().reshape(1) * n


class RootMeanSquaredError(MeanMetric):
    def __init__(self, name: str = "rmse") -> None:
        super().__init__(name, mse)

    def finalize(self, sums: Sequence[float], count: int) -> float:
        return math.sqrt(sums[0] / count)


class R2Score(Metric):
    """Coefficient of determination over all target elements of the epoch."""

    size = 4  # squared error, sum of y, sum of y^2, number of elements

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor, n: int) -> torch.Tensor:
        y = targets.float()
        error = (outputs.reshape(targets.shape).float() - y).pow(2).sum()
        count = torch.tensor(float(y.numel()), device=y.device)
        return torch.stack([error, y.sum(), y.pow(2).sum(), count])

    def finalize(self, sums: Sequence[float], count: int) -> float:
        sse, sum_y, sum_y2, elements = sums
        total = sum_y2 - sum_y * sum_y / elements
        return 1.0 - sse / total if total > 0 else float("nan")


class TorchMetric(Metric):
    """A torchmetrics `Metric`: it keeps its own state (no running sums); each pass updates a fresh copy.
    `loss_name` says whether the outputs are logits (see `metric_objects.update`)."""

    size = 0

    def __init__(self, name: str, metric: Any, loss_name: str | None = None) -> None:
        super().__init__(name)
        self.metric = metric
        self.loss_name = loss_name

    def check(self, outputs: torch.Tensor, targets: torch.Tensor, n: int) -> None:
        """A scratch copy updates on the sample batch and, when it can compute on so few, must give one number."""
        scratch = metric_objects.fresh_copy(self.metric, outputs.device)
        metric_objects.update(scratch, outputs, targets, self.loss_name)
        scratch.distributed_available_fn = lambda: False  # a check on one rank: no collective
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no positive samples" and the like, on two samples
                result = scratch.compute()
        except Exception:  # two samples may be too few to compute: the epoch will tell
            result = None
        if isinstance(result, torch.Tensor) and result.numel() != 1:
            metric_objects.value(scratch, self.name)  # raises, naming the shape


@dataclass(frozen=True)
class Named:
    """A metric with the name it is logged under: `gl.named(metric, "f1")` (see `named`)."""

    metric: Any
    name: str

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.metric(outputs, targets)


def named(metric: Any, name: str) -> Named:
    """`metric` logged as `name` (`val_<name>` on validation): a torchmetrics Metric, a callable
    (outputs, targets) -> tensor (a lambda too) or a metric name, e.g. `gl.named(MulticlassF1Score(3), "f1")`."""
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"named(metric, name): name must be a word such as 'f1'; received: name={name!r}")
    if not (isinstance(metric, (str, Metric)) or callable(metric)):
        raise TypeError(f"named(metric, name): metric must be a metric name, a callable or a torchmetrics Metric; received: {metric!r}")
    return Named(metric, name)


def resolve_metric(metric: str | MetricFn | Metric, loss_name: str | None = None) -> Metric:
    """A metric given by name, as a callable(outputs, targets) -> tensor, a torchmetrics `Metric`,
    `named(...)`, or a `Metric`."""
    if isinstance(metric, Named):
        inner = metric.metric
        if metric_objects.is_torchmetric(inner):
            return TorchMetric(metric.name, inner, loss_name)
        if callable(inner) and not isinstance(inner, Metric):
            return MeanMetric(metric.name, inner)
        renamed = copy.copy(resolve_metric(inner, loss_name))
        renamed.name = metric.name
        return renamed
    if isinstance(metric, Metric):
        return metric
    if metric_objects.is_torchmetric(metric):
        return TorchMetric(metric_objects.snake_name(metric), metric, loss_name)
    if metric_objects.is_collection(metric):
        raise TypeError(
            f"a MetricCollection is several metrics: pass them one by one, metrics=[*collection.values()], "
            f"or gl.named(metric, name) each; received: {metric!r}"
        )
    if isinstance(metric, str):
        name = metric.lower()
        if name in ("accuracy", "acc"):
            return Accuracy("accuracy", logits=loss_name != "bce")
        if name == "binary_accuracy":
            logits = loss_name != "bce"
            return MeanMetric(name, lambda o, t: accuracy(o.reshape(t.shape), t, logits=logits))
        top_k = re.fullmatch(r"top_?(\d+)_accuracy", name)
        if top_k:
            k = int(top_k.group(1))
            return MeanMetric(name, lambda o, t: top_k_accuracy(o, t, k))
        if name in ("mae", "mean_absolute_error"):
            return MeanMetric("mae", mae)
        if name in ("mse", "mean_squared_error"):
            return MeanMetric("mse", mse)
        if name in ("rmse", "root_mean_squared_error"):
            return RootMeanSquaredError()
        if name in ("r2", "r2_score"):
            return R2Score("r2")
        raise ValueError(
            f"unknown metric {metric!r}: use one of 'accuracy', 'top5_accuracy', 'binary_accuracy', "
            "'mae', 'mse', 'rmse', 'r2', or pass a callable(outputs, targets) -> tensor"
        )
    if callable(metric):
        name = getattr(metric, "__name__", None) or getattr(metric, "name", None)  # type: ignore[assignment]
        if not name or name == "<lambda>":
            raise ValueError(
                f"metric {metric!r} has no usable name: define it with `def my_metric(outputs, targets)` "
                "(it is logged under its __name__) or set a `name` attribute"
            )
        return MeanMetric(name, metric)
    raise TypeError(f"metrics must be names or callables(outputs, targets) -> tensor; received: {metric!r}")


def resolve_metrics(metrics: Sequence[str | MetricFn | Metric], loss_name: str | None) -> list[Metric]:
    if isinstance(metrics, (str, Metric)) or callable(metrics):
        metrics = [metrics]
    resolved = [resolve_metric(m, loss_name) for m in metrics]
    names = [m.name for m in resolved]
    for name in names:
        if name in RESERVED_NAMES:
            raise ValueError(f"metric name {name!r} is reserved by gradloop: rename the metric")
        if names.count(name) > 1:
            raise ValueError(f"metric {name!r} is given twice: each metric needs its own name")
    return resolved


class MetricSet:
    """The loss, the values a step logs (`value_names`) and the metrics of one pass over the data,
    accumulated on `device` as sample-weighted sums; torchmetrics metrics in copies of their own."""

    def __init__(self, metrics: Sequence[Metric], device: torch.device, value_names: Sequence[str] = ()) -> None:
        self.metrics = list(metrics)
        self.value_names = list(value_names)
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.objects = {m.name: metric_objects.fresh_copy(m.metric, device) for m in self.metrics if isinstance(m, TorchMetric)}
        self.reset()

    def reset(self) -> None:
        for obj in self.objects.values():
            obj.reset()
        self.loss_sum = torch.zeros((), dtype=self.dtype, device=self.device)
        self.sums = [torch.zeros(m.size, dtype=self.dtype, device=self.device) for m in self.metrics]
        self.value_sums = torch.zeros(len(self.value_names), dtype=self.dtype, device=self.device)
        self.count = 0
        self.grad_norm_sum = torch.zeros((), dtype=self.dtype, device=self.device)
        self.grad_norm_steps = 0

    def add_grad_norm(self, norm: torch.Tensor) -> None:
        self.grad_norm_sum += norm.detach()
        self.grad_norm_steps += 1

    def state_dict(self) -> dict[str, object]:
        """The running sums, so that an epoch resumed mid-way reports the same numbers."""
        return {
            "loss_sum": self.loss_sum,
            "sums": list(self.sums),
            "value_sums": self.value_sums,
            "count": self.count,
            "grad_norm_sum": self.grad_norm_sum,
            "grad_norm_steps": self.grad_norm_steps,
            "objects": {name: metric_objects.state(obj) for name, obj in self.objects.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.loss_sum = state["loss_sum"].to(self.device, self.dtype)
        self.sums = [s.to(self.device, self.dtype) for s in state["sums"]]
        self.value_sums = state["value_sums"].to(self.device, self.dtype)
        self.count = int(state["count"])
        self.grad_norm_sum = state["grad_norm_sum"].to(self.device, self.dtype)
        self.grad_norm_steps = int(state["grad_norm_steps"])
        saved = state.get("objects", {})
        for name, obj in self.objects.items():
            if name in saved:
                metric_objects.load_state(obj, saved[name])
            else:
                obj.reset()

    def update(
        self,
        loss: torch.Tensor,
        outputs: torch.Tensor | None,
        targets: torch.Tensor | None,
        n: int,
        values: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.loss_sum.add_(loss.detach(), alpha=n)  # one op, in the sum's dtype
        if values:
            if not self.value_names and self.count == 0:  # data that cannot be sampled ahead: the first batch tells
                self.value_names = list(values)
                self.value_sums = torch.zeros(len(values), dtype=self.dtype, device=self.device)
            if list(values) != self.value_names:
                raise ValueError(
                    f"step(model, batch) returned the values {list(values)} here but {self.value_names} on the "
                    "first batch: return the same keys for every batch"
                )
            self.value_sums.add_(torch.stack([v.detach().to(self.dtype) for v in values.values()]), alpha=n)
        if outputs is not None and targets is not None:
            for metric, total in zip(self.metrics, self.sums):
                if isinstance(metric, TorchMetric):
                    metric_objects.update(self.objects[metric.name], outputs, targets, metric.loss_name)
                else:
                    total += metric.batch_sums(outputs, targets, n)
        self.count += n

    def all_reduce(self) -> None:
        """Every rank's sums, added up, on every rank: a resume point that holds the whole epoch so far.
        torchmetrics states are gathered by torchmetrics, reduced as each metric declares."""
        for obj in self.objects.values():
            metric_objects.gather(obj)
        parts = self._parts(with_counts=True)
        total = torch.split(distributed.all_reduce_sum(torch.cat(parts)), [part.numel() for part in parts])
        self.loss_sum, self.grad_norm_sum = total[0].reshape(()).clone(), total[1].reshape(()).clone()
        self.value_sums, self.sums = total[2].clone(), [chunk.clone() for chunk in total[3:-1]]
        self.count, self.grad_norm_steps = (int(v) for v in total[-1].tolist())

    def _parts(self, with_counts: bool = False) -> list[torch.Tensor]:
        """The sums in the order `compute` reads them: loss, grad norm, values, metrics (then the counts)."""
        parts = [self.loss_sum.reshape(1), self.grad_norm_sum.reshape(1), self.value_sums, *self.sums]
        if with_counts:
            parts.append(torch.tensor([self.count, self.grad_norm_steps], dtype=self.dtype, device=self.device))
        return parts

    def compute(self, prefix: str = "") -> dict[str, float]:
        """Reads every sum in one host transfer and returns `{prefix + name: float}`.

        Under torchrun every rank must call it at the same point: the sums and counts of all ranks
        are added up first (one all-reduce), even on a rank that saw no samples.
        """
        count, grad_norm_steps = self.count, self.grad_norm_steps
        if distributed.active():
            values = distributed.all_reduce_sum(torch.cat(self._parts(with_counts=True))).tolist()  # the one collective, and the one sync
            count, grad_norm_steps = int(values[-2]), int(values[-1])
        elif count:
            values = torch.cat(self._parts()).tolist()  # the one sync
        if count == 0:
            return {}
        logs = {f"{prefix}loss": values[0] / count}
        for i, name in enumerate(self.value_names):
            logs[f"{prefix}{name}"] = values[2 + i] / count
        offset = 2 + len(self.value_names)
        for metric in self.metrics:
            if isinstance(metric, TorchMetric):  # under torchrun torchmetrics gathers the ranks' states here
                logs[f"{prefix}{metric.name}"] = metric_objects.value(self.objects[metric.name], metric.name)
            else:
                logs[f"{prefix}{metric.name}"] = float(metric.finalize(values[offset : offset + metric.size], count))
            offset += metric.size
        if grad_norm_steps:
            logs[f"{prefix}grad_norm"] = values[1] / grad_norm_steps
        return logs
