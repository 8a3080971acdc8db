"""torchmetrics `Metric` objects in `metrics=[...]`: whole-epoch values (scikit-learn's), a fresh copy per
pass, names, resume, 2 Gloo ranks, and no import of torchmetrics by `import gradloop`."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradloop as gl
from gradloop.names import metric_objects
from helpers import free_port, sigterm_at

torchmetrics = pytest.importorskip("torchmetrics")
metrics_sk = pytest.importorskip("sklearn.metrics")
from torchmetrics.classification import BinaryAUROC, MulticlassAUROC, MulticlassF1Score  # noqa: E402


def three_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 0.8).long()
    return X, y


def model(outputs: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, outputs))


def test_multiclass_f1_and_auroc_are_sklearns_on_the_whole_set_not_a_batch_mean() -> None:
    X, y = three_classes(160, 0)
    Xv, yv = three_classes(61, 1)
    metrics = [MulticlassF1Score(3, average="macro"), MulticlassAUROC(3)]
    trainer = gl.Trainer(model(), lr=0.01, metrics=metrics, max_epochs=3, default_callbacks=False, device="cpu")
    history = trainer.fit((X, y), val=(Xv, yv), batch_size=16)
    logs = trainer.validate((Xv, yv), batch_size=7)

    scores = trainer.predict(Xv)
    f1 = metrics_sk.f1_score(yv.numpy(), scores.argmax(1).numpy(), average="macro")
    auroc = metrics_sk.roc_auc_score(yv.numpy(), scores.softmax(1).numpy(), multi_class="ovr", average="macro")
    assert logs["val_multiclass_f1score"] == pytest.approx(f1, abs=1e-6)
    assert logs["val_multiclass_auroc"] == pytest.approx(auroc, abs=1e-6)
    # the last epoch's validation saw the same weights, in batches of 16
    assert history["val_multiclass_f1score"][-1] == pytest.approx(f1, abs=1e-6)
    assert history["val_multiclass_auroc"][-1] == pytest.approx(auroc, abs=1e-6)
    batch_mean = np.mean([metrics_sk.f1_score(yv[i : i + 7], scores[i : i + 7].argmax(1), average="macro") for i in range(0, 61, 7)])
    assert abs(batch_mean - f1) > 1e-3  # the test tells the whole-set value from a mean of batch values
    assert metrics[0].update_count == 0 and metrics[1].update_count == 0  # the user's objects are never updated


def test_binary_auroc_of_a_single_logit_is_sklearns() -> None:
    X, y = three_classes(160, 0)
    y = (y > 0).float().reshape(-1, 1)  # (N, 1) like the model's one logit, as BCEWithLogitsLoss wants
    Xv, yv = three_classes(61, 1)
    yv = (yv > 0).float().reshape(-1, 1)
    trainer = gl.Trainer(model(1), lr=0.01, loss="bce_with_logits", metrics=[BinaryAUROC()], max_epochs=2, default_callbacks=False)
    trainer.fit((X, y), val=(Xv, yv), batch_size=16)
    logs = trainer.validate((Xv, yv), batch_size=5)
    expected = metrics_sk.roc_auc_score(yv.squeeze(1).numpy(), trainer.predict(Xv).squeeze(1).numpy())
    assert logs["val_binary_auroc"] == pytest.approx(expected, abs=1e-6)


def test_training_value_is_the_whole_epochs_and_validation_between_steps_does_not_touch_it() -> None:
    X, y = three_classes(90, 0)
    Xv, yv = three_classes(30, 1)
    net = model()
    f1 = MulticlassF1Score(3, average="macro")
    frozen = torch.optim.SGD(net.parameters(), lr=0.0)  # fixed weights: the epoch's predictions are the model's
    trainer = gl.Trainer(net, optimizer=frozen, metrics=[f1], max_epochs=1, val_every_n_steps=1, default_callbacks=False)
    history = trainer.fit((X, y), val=(Xv, yv), batch_size=8)
    scores = trainer.predict(X)
    assert history["multiclass_f1score"] == [pytest.approx(metrics_sk.f1_score(y, scores.argmax(1), average="macro"), abs=1e-6)]
    assert history["val_multiclass_f1score"] == [
        pytest.approx(metrics_sk.f1_score(yv, trainer.predict(Xv).argmax(1), average="macro"), abs=1e-6)
    ]


def test_named_gives_the_log_keys() -> None:
    X, y = three_classes(64, 0)

    def margin(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs.max(1).values.mean()

    metrics = [
        gl.named(MulticlassF1Score(3, average="macro"), "f1"),
        gl.named(lambda o, t: o.max(1).values.mean(), "margin"),
        gl.named("accuracy", "acc"),
        MulticlassF1Score(3, average="micro"),
    ]
    trainer = gl.Trainer(model(), metrics=metrics, max_epochs=1, default_callbacks=False)
    history = trainer.fit((X, y), val=(X, y), batch_size=16)
    assert list(history) == ["loss", "f1", "margin", "acc", "multiclass_f1score", "val_loss", "val_f1", "val_margin", "val_acc",
                             "val_multiclass_f1score", "lr", "time"]  # fmt: skip
    plain = gl.Trainer(model(), metrics=[margin, "accuracy"], max_epochs=1, default_callbacks=False).fit((X, y), val=(X, y), batch_size=16)
    assert history["margin"] == plain["margin"] and history["acc"] == plain["accuracy"]
    with pytest.raises(TypeError, match=r"name must be a word such as 'f1'; received: name='f 1'"):
        gl.named(MulticlassF1Score(3), "f 1")
    with pytest.raises(ValueError, match="'f1' is given twice"):
        gl.Trainer(model(), metrics=[gl.named("accuracy", "f1"), gl.named(MulticlassF1Score(3), "f1")])


def test_class_names_in_snake_case() -> None:
    assert metric_objects.snake_name(MulticlassF1Score(3)) == "multiclass_f1score"
    assert metric_objects.snake_name(BinaryAUROC()) == "binary_auroc"
    assert metric_objects.snake_name(torchmetrics.MeanSquaredError()) == "mean_squared_error"


def test_a_metric_that_computes_several_numbers_is_refused_before_training() -> None:
    X, y = three_classes(64, 0)
    trainer = gl.Trainer(model(), metrics=[MulticlassF1Score(3, average=None)], default_callbacks=False)
    with pytest.raises(ValueError, match=r"'multiclass_f1score' \(MulticlassF1Score\) computes \(3,\), not one number.*average='macro'"):
        trainer.fit((X, y), batch_size=16)


def test_outputs_that_do_not_fit_the_metric_are_named_before_training() -> None:
    X, y = three_classes(64, 0)
    trainer = gl.Trainer(model(), metrics=[MulticlassF1Score(5)], default_callbacks=False)
    with pytest.raises(ValueError, match=r"metric 'multiclass_f1score' cannot compare model outputs"):
        trainer.fit((X, y), batch_size=16)
    with pytest.raises(TypeError, match=r"a MetricCollection is several metrics: pass them one by one"):
        gl.Trainer(model(), metrics=[torchmetrics.MetricCollection([MulticlassF1Score(3)])])


def resumable_trainer(net: nn.Module, run_dir: Path, extra: list[gl.Callback]) -> gl.Trainer:
    metrics = [MulticlassF1Score(3, average="macro"), MulticlassAUROC(3), "accuracy"]  # a sum state and a cat state
    return gl.Trainer(net, lr=3e-3, metrics=metrics, max_epochs=3, seed=7, run_dir=run_dir, callbacks=extra, default_callbacks=False)


@pytest.mark.parametrize("stop_step", [4, 10])  # 7 steps per epoch: inside the first and the second epoch
def test_resume_mid_epoch_is_bit_identical_with_torchmetrics(tmp_path: Path, stop_step: int) -> None:
    X, y = three_classes(100, 0)
    Xv, yv = three_classes(30, 1)
    net = model()
    straight_net = copy.deepcopy(net)
    straight = resumable_trainer(straight_net, tmp_path / "straight", []).fit((X, y), val=(Xv, yv), batch_size=16)

    with pytest.raises(SystemExit):
        resumable_trainer(copy.deepcopy(net), tmp_path / "cut", [sigterm_at(stop_step)]).fit((X, y), val=(Xv, yv), batch_size=16)
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    partial = saved["resume_point"]["metrics"]["objects"]
    assert partial["multiclass_f1score"]["update_count"] == stop_step % 7 and partial["multiclass_auroc"]["states"]["preds"]
    resumed_net = copy.deepcopy(net)
    resumed = resumable_trainer(resumed_net, tmp_path / "cut", []).fit((X, y), val=(Xv, yv), batch_size=16, resume="last")

    drop_time = lambda h: [{k: v for k, v in e.items() if k != "time"} for e in h.epochs]  # noqa: E731
    assert drop_time(resumed) == drop_time(straight)
    assert all(torch.equal(a, b) for a, b in zip(straight_net.state_dict().values(), resumed_net.state_dict().values()))


def test_import_gradloop_does_not_import_torchmetrics() -> None:
    probe = (
        "import sys, torch, gradloop as gl\n"
        "gl.Trainer(torch.nn.Linear(2, 2), default_callbacks=False).fit((torch.randn(8, 2), torch.zeros(8).long()), batch_size=4)\n"
        "print('torchmetrics' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from torch import nn
    from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score
    import gradloop as gl
    from gradloop.names import metric_objects
    from gradloop.names.metrics import MetricSet, resolve_metrics

    rank, out = int(os.environ["RANK"]), sys.argv[1]
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    net.load_state_dict(torch.load(os.path.join(out, "weights.pt")))
    X, y, Xv, yv = torch.load(os.path.join(out, "data.pt"))
    metrics = [MulticlassF1Score(3, average="macro"), MulticlassAUROC(3)]
    trainer = gl.Trainer(net, lr=0.01, metrics=metrics, max_epochs=2, default_callbacks=False)
    history = trainer.fit((X, y), val=(Xv, yv), batch_size=16)
    results = {"history": {k: v for k, v in history.items() if k != "time"}, "validate": trainer.validate((Xv, yv), batch_size=7)}
    torch.save(net.state_dict(), os.path.join(out, f"trained{rank}.pt"))

    # what a preemption saves: every rank's part of the epoch, gathered into the resume point
    meter = MetricSet(resolve_metrics(metrics, "cross_entropy"), torch.device("cpu"))
    with torch.no_grad():
        part = slice(0, 40) if rank == 0 else slice(40, 61)  # uneven parts
        meter.update(torch.zeros(()), net(Xv[part]), yv[part], len(yv[part]))
    meter.all_reduce()
    if rank == 0:
        torch.save(meter.state_dict(), os.path.join(out, "gathered.pt"))
    with open(os.path.join(out, f"results{rank}.json"), "w") as f:
        json.dump(results, f)
    """
)


def test_two_gloo_ranks_report_the_single_process_values(tmp_path: Path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    X, y = three_classes(101, 0)
    Xv, yv = three_classes(61, 1)
    torch.save(model().state_dict(), tmp_path / "weights.pt")
    torch.save((X, y, Xv, yv), tmp_path / "data.pt")
    (tmp_path / "train.py").write_text(DDP_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               "--master_port", str(free_port()), str(tmp_path / "train.py"), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"results{rank}.json").read_text()) for rank in (0, 1))
    assert r0 == r1  # gathered by torchmetrics: the same numbers on both ranks

    net = model()
    net.load_state_dict(torch.load(tmp_path / "trained0.pt"))
    metrics = [MulticlassF1Score(3, average="macro"), MulticlassAUROC(3)]
    alone = gl.Trainer(net, metrics=metrics, default_callbacks=False).validate((Xv, yv), batch_size=61)
    for key, value in alone.items():
        assert r0["validate"][key] == pytest.approx(value, abs=1e-6), key
    assert r0["history"]["val_multiclass_f1score"][-1] == pytest.approx(alone["val_multiclass_f1score"], abs=1e-6)

    gathered = torch.load(tmp_path / "gathered.pt", weights_only=True)["objects"]
    for metric in metrics:
        name = metric_objects.snake_name(metric)
        fresh = metric_objects.fresh_copy(metric, torch.device("cpu"))
        metric_objects.load_state(fresh, gathered[name])
        assert metric_objects.value(fresh, name) == pytest.approx(alone[f"val_{name}"], abs=1e-6), name


PREEMPT_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from torch import nn
    from torchmetrics.classification import MulticlassAUROC, MulticlassF1Score
    import gradloop as gl

    rank, out, phase = int(os.environ["RANK"]), sys.argv[1], sys.argv[2]
    X, y, Xv, yv = torch.load(os.path.join(out, "data.pt"))

    class Preempt(gl.Callback):
        def on_optimizer_step(self, trainer):
            if rank == 1 and trainer.state.global_step == 9:  # inside the second epoch (7 steps each)
                os.kill(os.getpid(), signal.SIGTERM)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    run = os.path.join(out, "straight" if phase == "straight" else "cut")
    trainer = gl.Trainer(net, lr=0.01, max_epochs=3, seed=3, run_dir=run, default_callbacks=False,
                         callbacks=[gl.ModelCheckpoint()] + ([Preempt()] if phase == "cut" else []),
                         metrics=[MulticlassF1Score(3, average="macro"), MulticlassAUROC(3)])
    try:
        trainer.fit((X, y), val=(Xv, yv), batch_size=16, resume="last" if phase == "resume" else None)
    except SystemExit as stop:
        sys.exit(stop.code)
    if rank == 0:
        torch.save(net.state_dict(), os.path.join(out, f"{phase}.pt"))
        with open(os.path.join(out, f"{phase}.json"), "w") as f:
            json.dump([{k: v for k, v in e.items() if k != "time"} for e in trainer.history.epochs], f)
    """
)


def test_preemption_under_two_gloo_ranks_resumes_the_metrics_exactly(tmp_path: Path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    X, y = three_classes(203, 0)
    Xv, yv = three_classes(61, 1)
    torch.save((X, y, Xv, yv), tmp_path / "data.pt")
    (tmp_path / "train.py").write_text(PREEMPT_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    def torchrun(phase: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                   "--master_port", str(free_port()), str(tmp_path / "train.py"), str(tmp_path), phase]  # fmt: skip
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)

    for phase, code in (("straight", 0), ("cut", 1)):  # torchrun reports a rank's 143 as 1
        done = torchrun(phase)
        assert done.returncode == code, phase + done.stderr[-3000:]
    saved = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    steps = saved["progress"]["step_in_epoch"]
    preds = saved["resume_point"]["metrics"]["objects"]["multiclass_auroc"]["states"]["preds"]
    assert steps > 0 and sum(len(p) for p in preds) == 2 * 16 * steps  # both ranks' batches of the epoch so far
    done = torchrun("resume")
    assert done.returncode == 0, done.stderr[-3000:]
    history, expected = (json.loads((tmp_path / f"{phase}.json").read_text()) for phase in ("resume", "straight"))
    assert history == expected
    resumed, straight = (torch.load(tmp_path / f"{phase}.pt") for phase in ("resume", "straight"))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
