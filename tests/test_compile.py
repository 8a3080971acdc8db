"""Trainer(compile=...) and user-compiled modules: the same training, plain keys in every file, resume across both."""

import copy
import functools
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import gradloop as gl
from gradloop.persistence import checkpoint
from helpers import BLOBS_CONFIG, run_cli, torchrun, write_blobs_csv


class Recording:
    """A torch.compile backend that runs dynamo's graphs as they are (torch's "eager" backend) and records
    each one, and whether a compiled graph ran for training, evaluation (under inference mode) or both."""

    def __init__(self):
        self.graphs, self.ran_for_evaluation = [], set()

    def __call__(self, graph, example_inputs):
        self.graphs.append(graph)

        def run(*args):
            self.ran_for_evaluation.add(torch.is_inference_mode_enabled())
            return graph.forward(*args)

        return run


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(90, 6, generator=g)
    y = (X[:, :2].sum(dim=1) > 0).long() + (X[:, 2] > 1).long()
    torch.manual_seed(seed)
    return X, y, Net()


class Net(nn.Module):
    """A module of the user's own: `model.compile()` compiles its forward (on a bare nn.Sequential of torch's
    layers it compiles nothing: dynamo skips torch's own frames)."""

    def __init__(self):
        super().__init__()
        self.hidden, self.dropout, self.out = nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.dropout(self.hidden(x).relu()))


def trainer(model, max_epochs=2, run_dir=None, **options):
    return gl.Trainer(model, lr=1e-2, max_epochs=max_epochs, seed=3, run_dir=run_dir, default_callbacks=run_dir is not None, **options)


def fit(model, X, y, **options):
    t = trainer(model, **options)
    history = t.fit((X[:70], y[:70]), val=(X[70:], y[70:]), batch_size=16)  # 70 = 4 x 16 + 6: a smaller last batch
    return t, [{k: v for k, v in e.items() if k != "time"} for e in history.epochs]


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_compiled_forwards_give_the_eager_numbers_exactly():
    """Dynamo's graphs run as they are: training (with dropout), accumulation and validation equal eager, bit for bit."""
    X, y, model = problem()
    eager = copy.deepcopy(model)
    backend = Recording()
    t, history = fit(model, X, y, compile={"backend": backend}, accumulate_grad_batches=2)
    _, eager_history = fit(eager, X, y, accumulate_grad_batches=2)
    assert t.model is model
    assert backend.ran_for_evaluation == {False, True}  # the training and the evaluation forwards ran compiled
    assert same_weights(model, eager)
    assert history == eager_history


def test_eval_mode_reaches_the_compiled_forward():
    """The compiled module sees train()/eval(): no dropout in validate and predict, dropout again in training."""
    X, y, model = problem()
    backend = Recording()
    t = trainer(model, compile={"backend": backend})
    t.fit((X, y), batch_size=30)
    eager = copy.deepcopy(model).eval()
    with torch.no_grad():
        expected = eager(X)
    assert backend.ran_for_evaluation == {False}
    assert torch.equal(t.predict(X, batch_size=30), expected)
    assert backend.ran_for_evaluation == {False, True}  # predict ran the compiled forward
    assert t.validate((X, y), batch_size=30) == trainer(copy.deepcopy(model)).validate((X, y), batch_size=30)
    assert model.training  # the user's mode is given back
    model.train()
    compiled = t._train_model
    assert not torch.equal(compiled(X), compiled(X))  # dropout is on in train mode


def test_compile_options_are_passed_to_torch_compile(monkeypatch):
    seen = []
    real = torch.compile

    @functools.wraps(real)
    def spy(model, **options):
        seen.append(options)
        return real(model, **options)

    monkeypatch.setattr(torch, "compile", spy)
    X, y, model = problem()
    backend = Recording()
    trainer(model, compile={"backend": backend, "dynamic": False, "fullgraph": True})
    trainer(copy.deepcopy(model), compile=True)
    assert seen == [{"backend": backend, "dynamic": False, "fullgraph": True}, {}]


def test_bad_compile_settings_are_one_line_errors():
    _, _, model = problem()
    with pytest.raises(ValueError, match=r"unknown option 'mdoe'.*did you mean 'mode'.*accepts fullgraph, dynamic, backend, mode"):
        trainer(model, compile={"mdoe": "max-autotune"})
    with pytest.raises(TypeError, match=r"compile must be True, False or a dict"):
        trainer(model, compile="yes")
    with pytest.raises(ValueError, match=r"torch.compile refuses compile=\{'mode': 'bogus'\}: RuntimeError: Unrecognized mode") as err:
        trainer(model, compile={"mode": "bogus"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"torch.compile refuses .*InvalidBackend"):
        trainer(model, compile={"backend": "no-such-backend"})
    with pytest.raises(ValueError, match=r"already compiled"):
        trainer(torch.compile(model, backend="eager"), compile=True)


@pytest.mark.parametrize("how", ["torch.compile(model)", "model.compile()"])
def test_a_model_the_user_compiled_trains_through_it_and_saves_plain_keys(tmp_path, how):
    X, y, model = problem()
    eager = copy.deepcopy(model)
    backend = Recording()
    if how == "model.compile()":
        model.compile(backend=backend)
        given = model
    else:
        given = torch.compile(model, backend=backend)
    t, history = fit(given, X, y, run_dir=tmp_path / "run")
    _, eager_history = fit(eager, X, y)
    plain = list(eager.state_dict())
    assert t.model is model and backend.graphs
    assert same_weights(model, eager) and history == eager_history
    assert sorted(load_file(tmp_path / "run" / "model.safetensors")) == sorted(plain)
    assert list(checkpoint.load(tmp_path / "run" / "checkpoints" / "last.ckpt")["model"]) == plain


@pytest.mark.parametrize("first, then", [("compiled", "eager"), ("eager", "compiled")])
def test_compiled_and_eager_runs_resume_from_each_others_checkpoints(tmp_path, first, then):
    X, y, model = problem()
    straight = copy.deepcopy(model)
    settings = {"compiled": {"compile": {"backend": "eager"}}, "eager": {}}
    fit(model, X, y, max_epochs=2, run_dir=tmp_path, **settings[first])
    assert list(checkpoint.load(tmp_path / "checkpoints" / "last.ckpt")["model"]) == list(straight.state_dict())
    resumed = trainer(model, max_epochs=4, run_dir=tmp_path, **settings[then])
    resumed.fit((X[:70], y[:70]), val=(X[70:], y[70:]), batch_size=16, resume="last")
    fit(straight, X, y, max_epochs=4)
    assert same_weights(model, straight)


def test_files_saved_from_a_compiled_module_load_into_the_plain_one(tmp_path):
    """Weights and checkpoints with torch.compile's `_orig_mod.` keys (saved by hand, or by an older gradloop)."""
    X, y, model = problem()
    t, _ = fit(model, X, y)
    compiled = torch.compile(model, backend="eager")
    save_file({k: v.contiguous() for k, v in compiled.state_dict().items()}, tmp_path / "w.safetensors")
    state = t.state_dict()
    state["model"] = compiled.state_dict()
    checkpoint.save(state, tmp_path / "old.ckpt")

    _, _, fresh = problem(seed=1)
    gl.load_weights(fresh, tmp_path / "w.safetensors")
    assert same_weights(fresh, model)
    _, _, fresh = problem(seed=1)
    trainer(fresh).load_checkpoint(tmp_path / "old.ckpt")
    assert same_weights(fresh, model)
    _, _, fresh = problem(seed=1)
    gl.load_weights(torch.compile(fresh, backend="eager"), tmp_path / "w.safetensors")  # and into a compiled one
    assert same_weights(fresh, model)


def test_find_lr_uses_the_plain_model():
    X, y, model = problem()
    backend = Recording()
    t = trainer(model, compile={"backend": backend})
    t.find_lr((X, y), num_steps=5)
    assert backend.graphs == []


@pytest.mark.slow
def test_inductor_trains_close_to_eager():
    """torch.compile's default backend (inductor: generated C++ on the CPU) fuses and reorders: close, not equal."""
    X, y, model = problem()
    model.dropout.p = 0.0  # no dropout: inductor draws its random numbers its own way
    eager = copy.deepcopy(model)
    _, history = fit(model, X, y, compile=True)
    _, eager_history = fit(eager, X, y)
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert history[-1]["val_loss"] == pytest.approx(eager_history[-1]["val_loss"], rel=1e-4)


def test_the_command_line_compiles_with_train_compile(tmp_path, capsys):
    write_blobs_csv(tmp_path / "blobs.csv", n=60)
    (tmp_path / "run.toml").write_text(BLOBS_CONFIG + 'compile = { backend = "eager" }\n')
    code, _, err = run_cli(capsys, "fit", "run.toml", "--run-dir", "run")
    assert code == 0, err
    assert 'compile = { backend = "eager" }' in (tmp_path / "run" / "config.toml").read_text()
    assert not any("_orig_mod" in key for key in load_file(tmp_path / "run" / "model.safetensors"))
    (tmp_path / "bad.toml").write_text(BLOBS_CONFIG + 'compile = { mdoe = "max-autotune" }\n')
    code, _, err = run_cli(capsys, "fit", "bad.toml", "--run-dir", "bad")
    assert code == 2 and "train.compile: compile has an unknown option 'mdoe' (did you mean 'mode'?)" in err
    assert not (tmp_path / "bad").exists()


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch import nn
    import gradloop as gl

    rank, out = int(os.environ["RANK"]), sys.argv[1]
    graphs = []

    def recording(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(rank)  # different on each rank: DDP starts every rank from rank 0's weights
            self.hidden, self.out = nn.Linear(6, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.out(self.hidden(x).relu())

    g = torch.Generator().manual_seed(0)
    X = torch.randn(90, 6, generator=g)
    y = (X[:, :2].sum(dim=1) > 0).long()
    for name, compile in (("eager", False), ("compiled", {"backend": recording})):
        net = Net()
        trainer = gl.Trainer(net, lr=1e-2, max_epochs=2, accumulate_grad_batches=2, compile=compile, default_callbacks=False)
        trainer.fit((X, y), val=(X[:30], y[:30]), batch_size=8)
        torch.save({"state": net.state_dict(), "history": dict(trainer.history), "graphs": len(graphs)},
                   os.path.join(out, f"{name}{rank}.pt"))
    """
)


@pytest.mark.slow
def test_under_ddp_the_compiled_module_is_what_ddp_wraps(tmp_path):
    """2 ranks (Gloo): compiled DDP training, with no_sync under accumulation, equals eager DDP bit for bit."""
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    (tmp_path / "train.py").write_text(DDP_SCRIPT)
    done = torchrun(tmp_path / "train.py", tmp_path, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = {(name, rank): torch.load(tmp_path / f"{name}{rank}.pt") for name in ("eager", "compiled") for rank in (0, 1)}
    assert runs["eager", 0]["graphs"] == 0 and runs["compiled", 0]["graphs"] > 0
    for rank in (0, 1):
        eager, compiled = runs["eager", rank], runs["compiled", rank]
        assert compiled["history"] == {**eager["history"], "time": compiled["history"]["time"]}
        assert all(torch.equal(a, b) for a, b in zip(eager["state"].values(), compiled["state"].values()))
        assert list(compiled["state"]) == ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]
