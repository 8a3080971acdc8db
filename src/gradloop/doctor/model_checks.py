"""Checks of the untrained model against the data and the loss: shapes, final activation,
initial loss vs. chance, and train/eval consistency. All run without gradients.

With a step, they compare the "outputs" and "targets" the step returns (by the rules of `loss`,
which then names what the outputs are); a step that returns none has nothing to compare: skipped."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..checks import loss_problem
from ..step import describe
from .context import Context
from .report import Check, Skip, Status, dtype_of

# An untrained model should score about chance; far above it is confidently wrong, far below
# it knows what it cannot know yet (a label leaking into the inputs, or a broken loss).
INITIAL_HIGH, INITIAL_LOW = 2.0, 0.5
CHANCE_SAMPLES = 1024  # rows averaged for the initial loss
FIT_ADVICE = "Trainer.fit refuses to start on this too; the checks that train are skipped until it is fixed"
STEP_FIT_ADVICE = (
    "return outputs and targets that fit the loss named by loss=... (the one they are judged by), or pass loss=None "
    "to the doctor; the checks that train are skipped until it is fixed"
)
NO_LOSS = "no loss says what the step's outputs are (pass loss=...)"  # a step with loss=None
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_BOUNDS = {
    nn.Sigmoid: (0.0, 1.0),
    nn.Softmax: (0.0, 1.0),
    nn.Tanh: (-1.0, 1.0),
    nn.ReLU: (0.0, math.inf),
    nn.Softplus: (0.0, math.inf),
    nn.Hardsigmoid: (0.0, 1.0),
    nn.Hardtanh: (-1.0, 1.0),
}


def check_output(ctx: Context) -> Check:
    train = ctx.need_data()
    if ctx.probe_error is not None and ctx.step is not None:
        advice = "fix step(model, batch): Trainer.fit runs it on two samples first and refuses to start"
        return Check("model.output", "fail", ctx.probe_error, advice)
    if ctx.probe_error is not None:
        x = train.X if train.X is not None else train.raw_batches[0][0]
        shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else type(x).__name__
        advice = "make the model's first layer accept these inputs (e.g. nn.Linear(in_features=...), nn.Flatten() before it)"
        if isinstance(x, torch.Tensor) and not x.is_floating_point():
            advice = f"the inputs are {dtype_of(x)}: convert them with X.float() (unless the first layer is an nn.Embedding)"
        return Check("model.output", "fail", f"the model fails on inputs of shape {shape}: {ctx.probe_error}", advice)
    if ctx.usable is not None and ctx.usable.numel() == 0:
        raise Skip(f"no training row is usable: {ctx.excluded}")
    x, y = ctx.batch(ctx.batch_size)
    out, targets = ctx.outputs_of(x, y)
    # fit_error was found on two rows, the sample Trainer.fit checks: the same message as the Trainer's.
    problem = ctx.fit_error or output_problem(ctx, out, targets)
    if problem:
        return Check("model.output", "fail", problem, STEP_FIT_ADVICE if ctx.step is not None and ctx.loss_fn is not None else FIT_ADVICE)
    if ctx.step is None:
        return Check("model.output", "pass", f"outputs {describe(out)} fit targets {describe(y)} for {ctx.loss_name or 'the loss'}")
    judged = f"for {ctx.loss_name or 'the loss'}" if ctx.loss_fn is not None else "in number of samples (no loss given to judge them by)"
    return Check("model.output", "pass", f"the step's outputs {describe(out)} fit its targets {describe(targets)} {judged}")


def output_problem(ctx: Context, out: Any, y: Any) -> str | None:
    """What keeps the outputs from being trained against `y` with the loss, and the fix; None if nothing.

    The loss's rules are the core's (`checks.loss_problem`, in the Trainer's words). With a step, `out`
    and `y` are its "outputs" and "targets"; without a loss to judge them by, they need only be
    tensors with one row per sample alike."""
    if ctx.step is not None:
        for what, value in (("outputs", out), ("targets", y)):
            if not isinstance(value, torch.Tensor) or value.ndim == 0:
                return (
                    f"the step returns {what}={describe(value)}: return 'outputs' and 'targets' as tensors with one row "
                    "per sample (what metrics compare)"
                )
        if out.shape[0] != y.shape[0]:
            return (
                f"the step returns outputs {describe(out)} but targets {describe(y)}: return one row of each per sample "
                "(what metrics compare)"
            )
        if ctx.loss_fn is None:
            return None
    assert ctx.loss_fn is not None
    return loss_problem(ctx.loss_fn, ctx.loss_name, out, y, "train")


def _last_module(ctx: Context, x: Any, y: Any) -> tuple[str, nn.Module | None, Any, Any]:
    """Runs the model (or the step) once, eval, no grad, and names the leaf module whose output is the
    output (the step's "outputs"); also returns the output and the targets."""
    calls: list[tuple[str, nn.Module, Any]] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: calls.append((name, mod, out)))
        for name, m in ctx.model.named_modules()
        if not list(m.children())
    ]
    try:
        out, y = ctx.outputs_of(x, y)
    finally:
        for handle in handles:
            handle.remove()
    for name, module, result in reversed(calls):
        if result is out:
            return name, module, out, y
    return "", None, out, y


def check_loss_fit(ctx: Context) -> Check:
    ctx.need_model_batch()
    ctx.need_outputs()
    if ctx.loss_name is None:
        raise Skip(f"{'a custom loss' if ctx.loss_fn is not None else NO_LOSS}: the expected output range is unknown")
    x, y = ctx.batch(ctx.batch_size)
    name, last, out, y = _last_module(ctx, x, y)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise Skip("the outputs are not finite floats (see model.output, train.nan_origin)")
    final = f"final {type(last).__name__} ('{name}')" if last is not None else "final activation"
    rows = out.ndim >= 2 and out.shape[1] > 1
    probs = rows and bool((out >= 0).all()) and bool(((out.sum(1) - 1).abs() < 1e-3).all())
    logprobs = rows and bool((out <= 0).all()) and bool((out.logsumexp(1).abs() < 1e-3).all())
    unit = bool((out >= 0).all()) and bool((out <= 1).all())
    low, high = float(out.min()), float(out.max())
    loss = ctx.loss_name
    # per loss: (applies, status, message, fix), the first that applies decides; the last always applies
    rules: dict[str, list[tuple[bool, Status, str, str]]] = {
        "cross_entropy": [
            (
                isinstance(last, (nn.Softmax, nn.Softmin)) or probs,
                "fail",
                f"outputs already sum to 1 per row ({final}), but cross_entropy "
                "applies log-softmax itself: gradients vanish and the loss cannot approach 0",
                "remove the final Softmax and return raw logits; apply softmax only when reading probabilities",
            ),
            (
                isinstance(last, (nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardtanh)),
                "fail",
                f"the {final} squashes the logits into [{low:.2g}, {high:.2g}] before cross_entropy: the model cannot become confident",
                "remove the final activation and return raw logits",
            ),
            (
                isinstance(last, nn.LogSoftmax) or logprobs,
                "warn",
                f"outputs are already log-probabilities ({final}); cross_entropy applies log-softmax again (harmless but redundant)",
                "drop the LogSoftmax, or use loss='nll' to make it explicit",
            ),
            (
                isinstance(last, (nn.ReLU, nn.Softplus)),
                "warn",
                f"a {final} clips the logits at 0: a class cannot be voted down",
                "remove the final activation and return raw logits",
            ),
            (True, "pass", f"raw scores in [{low:.3g}, {high:.3g}] (last module {_name(name, last)}), as cross_entropy expects", ""),
        ],
        "nll": [
            (logprobs, "pass", "outputs are log-probabilities, as nll expects", ""),
            (
                True,
                "fail",
                f"nll needs log-probabilities but the outputs are "
                f"{'probabilities' if probs else 'not log-probabilities (exp(outputs) rows do not sum to 1)'} ({final})",
                "end the model with nn.LogSoftmax(dim=1), or use loss='cross_entropy' on raw logits",
            ),
        ],
        "bce_with_logits": [
            (
                isinstance(last, (nn.Sigmoid, nn.Hardsigmoid)),
                "fail",
                f"the {final} already maps outputs to [0, 1], and bce_with_logits applies a sigmoid again: the loss cannot approach 0",
                "remove the final Sigmoid (or use loss='bce')",
            ),
            (
                unit and out.numel() >= 8,
                "warn",
                f"all outputs lie in [{low:.3g}, {high:.3g}]: they look like probabilities, but bce_with_logits expects raw logits",
                "return raw scores; the loss applies the sigmoid itself",
            ),
            (True, "pass", f"raw scores in [{low:.3g}, {high:.3g}], as bce_with_logits expects", ""),
        ],
        "bce": [
            (
                not unit,
                "fail",
                f"bce needs probabilities in [0, 1] but outputs range over [{low:.3g}, {high:.3g}]",
                "use loss='bce_with_logits' on raw scores (numerically safer than Sigmoid + bce)",
            ),
            (True, "pass", f"outputs in [{low:.3g}, {high:.3g}], as bce expects", ""),
        ],
    }
    if loss in rules:
        _, status, message, fix = next(rule for rule in rules[loss] if rule[0])
        return Check("model.loss_fit", status, message, fix)
    bounds = next((b for kind, b in _BOUNDS.items() if isinstance(last, kind)), None)
    y_all = ctx.train.y if ctx.train is not None and ctx.train.y is not None and ctx.step is None else y
    y_all = y_all[torch.isfinite(y_all)] if y_all.is_floating_point() else y_all
    if bounds is not None and y_all.numel() and (float(y_all.min()) < bounds[0] or float(y_all.max()) > bounds[1]):
        message = (
            f"the {final} bounds outputs to [{bounds[0]:g}, {bounds[1]:g}] but targets "
            f"range over [{float(y_all.min()):.4g}, {float(y_all.max()):.4g}]"
        )
        advice = "remove the final activation for a regression target (or rescale the targets into its range)"
        return Check("model.loss_fit", "fail", message, advice)
    return Check("model.loss_fit", "pass", f"outputs unbounded by a final activation (last module {_name(name, last)}), fine for {loss}")


def check_initial_loss(ctx: Context) -> Check:
    ctx.need_model_batch()
    ctx.need_outputs()
    if ctx.loss_fn is None:
        raise Skip(f"{NO_LOSS}: no chance level is known")
    x, y = ctx.batch(CHANCE_SAMPLES)
    out, y = ctx.outputs_of(x, y)
    with torch.no_grad():
        loss = float(ctx.loss_fn(out, y))
    chance, how = _chance(ctx, out, y)
    if not math.isfinite(loss):
        return Check("model.initial_loss", "fail", f"the initial loss is {loss}", "see train.nan_origin for the module that produces it")
    if chance <= 0:
        advice = "a constant target needs no model: check the labels"
        return Check("model.initial_loss", "warn", f"initial loss {loss:.4g}; the targets are constant ({how} = {chance:.3g})", advice)
    ratio = loss / chance
    evidence = f"initial loss {loss:.4g} vs chance level {chance:.4g} ({how}): ratio {ratio:.2f}"
    if ratio > INITIAL_HIGH:
        advice = (
            "standardize y, or initialize the last layer's bias to mean(y)"
            if ctx.task == "regression"
            else "the untrained model is confidently wrong: standardize the inputs and shrink the last layer's initial weights"
        )
        return Check("model.initial_loss", "warn", evidence, advice)
    if ratio < INITIAL_LOW:
        advice = "an untrained model should not beat chance: check that the inputs do not contain the target"
        return Check("model.initial_loss", "warn", evidence, advice)
    return Check("model.initial_loss", "pass", evidence)


def _chance(ctx: Context, out: torch.Tensor, y: torch.Tensor) -> tuple[float, str]:
    task = ctx.task
    if task in ("classification", "probabilities"):
        classes = int(out.shape[1])
        return math.log(classes), f"ln {classes}, a uniform guess over {classes} classes"
    if task == "binary":
        return math.log(2), "ln 2, a guess of 0.5"
    if task == "regression":
        targets = ctx.usable_targets() if ctx.step is None else y  # the step's targets need not be the data's
        mean = (targets if targets is not None else y).float().mean(0).to(y.device)
        with torch.no_grad():
            return float(ctx.loss_fn(mean.expand_as(y).to(out.dtype), y)), "predicting mean(y)"
    raise Skip("no chance level is known for a custom loss")


def check_train_eval(ctx: Context) -> Check:
    ctx.need_model_batch()
    ctx.need_outputs()
    x, y = ctx.batch(min(ctx.batch_size, 64))
    if isinstance(x, torch.Tensor) and x.shape[0] < 2:
        raise Skip("a single training sample: batch statistics are undefined")
    first, second = ctx.outputs_of(x, y)[0], ctx.outputs_of(x, y)[0]
    training = ctx.outputs_of(x, y, train=True)[0]
    if not all(isinstance(t, torch.Tensor) for t in (first, second, training)):
        raise Skip("the model does not return a tensor (see model.output)")
    tolerance = 1e-5 * (1 + float(first.abs().max()))
    jitter = float((first - second).abs().max())
    if jitter > tolerance:
        message = f"eval-mode outputs change between two identical calls (max difference {jitter:.3g}): something random runs in eval mode"
        advice = "use nn.Dropout modules, or pass training=self.training to F.dropout"
        return Check("model.train_eval", "warn", message, advice)
    difference = float((training - first).abs().max())
    explained = [f"{type(m).__name__}('{n}')" for n, m in ctx.model.named_modules() if _mode_dependent(m)]
    differ = f"train- and eval-mode outputs differ by up to {difference:.3g}"
    if difference > tolerance and not explained:
        advice = "look for code that branches on self.training or keeps state between forward calls"
        return Check("model.train_eval", "warn", f"{differ}, but the model has no dropout or batch-norm module to explain it", advice)
    if difference > tolerance:
        more = " ..." if len(explained) > 4 else ""
        return Check("model.train_eval", "pass", f"{differ}, explained by {', '.join(explained[:4])}{more}")
    agree = "train- and eval-mode outputs agree" + ("" if explained else " (no dropout or batch-norm module)")
    return Check("model.train_eval", "pass", agree)


def _mode_dependent(module: nn.Module) -> bool:
    if isinstance(module, _DROPOUTS):
        return module.p > 0
    if isinstance(module, _NORMS):
        return bool(module.track_running_stats)
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
        return float(getattr(module, "dropout", 0) or 0) > 0
    return False


def _name(name: str, module: nn.Module | None) -> str:
    return f"{type(module).__name__} '{name}'" if module is not None else "unknown"


CHECKS: tuple[tuple[str, Callable[[Context], Check]], ...] = (
    ("model.output", check_output),
    ("model.loss_fit", check_loss_fit),
    ("model.initial_loss", check_initial_loss),
    ("model.train_eval", check_train_eval),
)
