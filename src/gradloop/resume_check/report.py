"""The result of a resume check: bit-identical, or the first difference, by how much, and the likely cause."""

from __future__ import annotations

from dataclasses import dataclass, field

# What each kind of first difference usually means, and the fix.
HINTS = {
    "setup": "the factory must return a fresh gl.Trainer around a freshly built model on each call",
    "initial weights": (
        "the factory builds different initial weights on each call: seed the model's construction inside the "
        "factory (torch.manual_seed(...) before building it) or load fixed initial weights"
    ),
    "data": (
        "the data pipeline: the Dataset or a transform draws random numbers from a generator that gradloop neither "
        "seeds nor saves (its own random.Random(), np.random.default_rng(), ... without a seed). Seed the Dataset's "
        "RNG (e.g. random.Random(seed + index) per item) or draw from torch's generator (torch.rand, torch.randint), "
        "which Trainer(seed=...) seeds and every checkpoint saves"
    ),
    "rng at a batch": (
        "the global random number generators are in another state as this batch's forward begins: something "
        "draws random numbers outside the training step (a callback, code in the data pipeline), or the checkpoint's "
        "RNG states were not put back"
    ),
    "outputs": (
        "the model's output differs for identical inputs, weights and RNG states: its forward depends on state outside the model, "
        "the optimizer and the RNG (a module-level global such as a call counter, a plain Python attribute), which "
        "no checkpoint can restore; keep such state in a buffer (self.register_buffer) so it is saved with the "
        "weights. Otherwise a nondeterministic op: torch.use_deterministic_algorithms(True) names it"
    ),
    "loss": (
        "the loss differs for identical inputs and outputs: the targets differ (the data pipeline) or the loss or "
        "step uses state outside the model, the optimizer and the RNG"
    ),
    "run": "the two runs took different paths (a callback stopped one of them early)",
    "weights": (
        "every batch, output and loss matched, yet the weights differ: a nondeterministic backward or optimizer op "
        "(torch.use_deterministic_algorithms(True) names it), or a callback that changes the weights from state "
        "outside its state_dict()"
    ),
    "optimizer": "the optimizer's state is not restored as it was: an optimizer or scheduler with state outside its state_dict()",
    "rng": (
        "something draws random numbers differently after the resume (a callback, or code outside the training step); "
        "every draw inside the loop is restored by the checkpoint"
    ),
    "history": "a metric or a callback keeps state outside its state_dict(), so the logged values differ",
    "callbacks": "a callback's state after the resume differs: it keeps state outside its state_dict()",
    "progress": "the step and epoch counters differ: the runs took different paths",
    "state": "part of the training state differs after the resume",
}


@dataclass(frozen=True)
class Difference:
    """One tensor or value that differs between the uninterrupted and the resumed run."""

    kind: str  # a key of HINTS: "data", "outputs", "loss", "weights", "optimizer", "rng", "history", ...
    name: str  # "fc1.weight", "input[0]", "optimizer state 'exp_avg' of fc1.weight", "rng 'python'", ...
    where: str  # "epoch 0, batch 5 (...), after the resume" or "at the end"
    max_abs_diff: float | None = None  # None where no number applies (RNG states, digests without copies)
    detail: str = ""

    def __str__(self) -> str:
        size = f": max abs diff {self.max_abs_diff:.3g}" if self.max_abs_diff is not None else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.kind}: {self.name} differs at {self.where}{size}{detail}"


@dataclass
class ResumeCheckResult:
    """`ok`: the resumed run ended bit-identical to the uninterrupted one; else `differences`, first one first."""

    ok: bool
    message: str
    differences: list[Difference] = field(default_factory=list)
    steps: int = 0  # optimizer steps of the uninterrupted run
    interrupted_at: int | None = None  # the optimizer step after which the other run was checkpointed and stopped

    def __str__(self) -> str:
        lines = [("OK    " if self.ok else "FAIL  ") + self.message]
        shown = self.differences[:_SHOWN]
        lines += [f"  - {d}" for d in shown]
        if len(self.differences) > len(shown):
            lines.append(f"  ... and {len(self.differences) - len(shown)} more differences (see .differences)")
        return "\n".join(lines)

    def __bool__(self) -> bool:
        return self.ok


_SHOWN = 10


def summarize(differences: list[Difference], steps: int, stop: int | None, stopped_where: str | None) -> ResumeCheckResult:
    where = f"interrupted after optimizer step {stop}" + (f" ({stopped_where})" if stopped_where else "")
    if not differences:
        message = (
            f"bit-identical: a run {where}, checkpointed and resumed in a fresh Trainer ends with the same weights, "
            f"optimizer state, RNG states, callbacks and history as the uninterrupted {steps}-step run"
        )
        return ResumeCheckResult(True, message, [], steps, stop)
    first = differences[0]
    scope = ""
    batch_kinds = ("data", "rng at a batch", "outputs", "loss")
    if first.kind in batch_kinds and "before the interruption" in first.where:
        scope = " (already before the interruption: the runs differ without any resume, from one factory call to the next)"
    elif first.kind in batch_kinds:
        scope = " (only after the resume: the checkpoint does not hold this state)"
    message = (
        f"not bit-identical: a run {where} and resumed differs from the uninterrupted {steps}-step run. "
        f"First difference: {first}{scope}. Likely cause: {HINTS.get(first.kind, HINTS['state'])}."
    )
    return ResumeCheckResult(False, message, differences, steps, stop)
