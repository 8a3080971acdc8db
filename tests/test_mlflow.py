"""gl.MLflowLogger: params, one metric value per epoch (step=epoch), artifacts; one run across SIGTERM and resume."""

import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import gradloop as gl
from helpers import BLOBS_CONFIG, run_cli, write_blobs_csv

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"  # the file store is deprecated in MLflow 3; artifacts go to ./mlruns (tmp)


def make_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    return X, (X[:, 0] > 0).long()


def make_trainer(logger, run_dir, max_epochs=3, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    callbacks = [logger, *kwargs.pop("callbacks", [])]
    return gl.Trainer(model, lr=0.01, callbacks=callbacks, max_epochs=max_epochs, run_dir=run_dir, device="cpu", **kwargs)


def history_of(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def test_params_metrics_per_epoch_and_artifacts(tmp_path, tracking_uri):
    logger = gl.MLflowLogger(experiment="blobs", tracking_uri=tracking_uri, run_name="first", params={"data": {"name": "toy"}})
    early = gl.EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)
    trainer = make_trainer(logger, tmp_path / "run", callbacks=[early], seed=1)
    history = trainer.fit(make_data(), val=make_data(32, seed=1), batch_size=16)

    client = MlflowClient(tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "blobs"
    params = run.data.params
    assert params["optimizer"] == "Adam" and params["lr"] == "0.01" and params["loss"] == "cross_entropy"
    assert params["max_epochs"] == "3" and params["batch_size"] == "16" and params["seed"] == "1" and params["metrics"] == "accuracy"
    assert params["data.name"] == "toy"  # nested params are flattened
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"):
        assert history_of(client, logger.run_id, name) == list(enumerate(history[name])), name

    artifacts = {a.path for a in client.list_artifacts(logger.run_id)}
    assert {"metrics.csv", "curves.png", "model.safetensors"} <= artifacts
    local = tmp_path / "downloaded"
    local.mkdir()
    for name in ("model.safetensors", "metrics.csv", "curves.png"):
        path = client.download_artifacts(logger.run_id, name, str(local))
        # the artifact is the final file: the best weights that restore_best_weights put back, the last curves and rows
        assert open(path, "rb").read() == (tmp_path / "run" / name).read_bytes(), name


def test_resume_from_an_older_checkpoint_logs_each_epoch_once(tmp_path, tracking_uri):
    """A process killed after logging an epoch but before its checkpoint: the resumed run does not log it twice."""
    run_dir = tmp_path / "run"
    logger = gl.MLflowLogger(experiment="e", tracking_uri=tracking_uri)
    make_trainer(logger, run_dir, callbacks=[gl.ModelCheckpoint(keep=5)]).fit(make_data(), batch_size=16)
    older = sorted((run_dir / "checkpoints").glob("epoch-1-*.ckpt"))[0]  # written after epoch 1 of 0..2

    again = gl.MLflowLogger(experiment="e", tracking_uri=tracking_uri)
    history = make_trainer(again, run_dir, max_epochs=4).fit(make_data(), batch_size=16, resume=older)
    assert again.run_id == logger.run_id
    client = MlflowClient(tracking_uri)
    steps = [step for step, _ in history_of(client, logger.run_id, "loss")]
    assert steps == [0, 1, 2, 3] and len(history.epochs) == 4
    assert len(client.search_runs([client.get_experiment_by_name("e").experiment_id])) == 1


SCRIPT = textwrap.dedent("""
    import json, sys, time, torch
    from torch import nn
    import gradloop as gl

    torch.set_num_threads(1)
    run_dir, uri, out = sys.argv[1], sys.argv[2], sys.argv[3]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 4, generator=g)
    y = (X[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    class Announce(gl.Callback):
        def on_train_batch_end(self, trainer, loss):
            print(f"step {trainer.state.global_step}", flush=True)
            time.sleep(0.02)

    logger = gl.MLflowLogger(experiment="preempted", tracking_uri=uri)
    trainer = gl.Trainer(model, max_epochs=4, seed=0, run_dir=run_dir, device="cpu", callbacks=[logger, Announce()])
    history = trainer.fit((X, y), val=(X[:32], y[:32]), batch_size=16, resume="last")
    json.dump({"run_id": logger.run_id, "history": history.epochs}, open(out, "w"))
""")


def test_sigterm_then_resume_continues_the_same_run(tmp_path, tracking_uri):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    args = [sys.executable, str(script), str(tmp_path / "run"), tracking_uri, str(tmp_path / "out.json")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.strip() == "step 15":  # 6 steps per epoch: inside epoch 2 (of 0..3)
            process.send_signal(signal.SIGTERM)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("preempted").experiment_id
    (stopped,) = client.search_runs([experiment])
    assert stopped.info.status == "KILLED"  # marked when the process exited
    assert [step for step, _ in history_of(client, stopped.info.run_id, "loss")] == [0, 1]

    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    import json

    result = json.loads((tmp_path / "out.json").read_text())
    (run,) = client.search_runs([experiment])  # no second run
    assert run.info.run_id == result["run_id"] == stopped.info.run_id and run.info.status == "FINISHED"
    for name in ("loss", "val_loss", "accuracy"):
        assert history_of(client, run.info.run_id, name) == [(e, logs[name]) for e, logs in enumerate(result["history"])]
    assert "model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_command_line_mlflow_table_logs_the_config_as_params(tmp_path, tracking_uri, capsys):
    write_blobs_csv(tmp_path / "blobs.csv")
    config = tmp_path / "blobs.toml"
    config.write_text(BLOBS_CONFIG + f'[callbacks.mlflow]\nexperiment = "cli"\ntracking_uri = "{tracking_uri}"\nrun_name = "blobs"\n')
    code, out, err = run_cli(capsys, "fit", config, "--run-dir", tmp_path / "run", "--set", "train.lr=0.01")
    assert code == 0, err

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    params = run.data.params
    assert run.info.run_name == "blobs" and run.info.status == "FINISHED"
    assert params["train.lr"] == "0.01" and params["data.batch_size"] == "16" and params["model.hidden"] == "[8]"
    assert params["callbacks.mlflow.experiment"] == "cli" and params["optimizer"] == "Adam"
    assert [step for step, _ in history_of(client, run.info.run_id, "val_loss")] == [0, 1]
    assert {"config.toml", "metrics.csv", "curves.png", "model.safetensors"} <= {a.path for a in client.list_artifacts(run.info.run_id)}

    code, _, err = run_cli(capsys, "resume", tmp_path / "run", "--max-epochs", "3")
    assert code == 0, err
    (resumed,) = client.search_runs([run.info.experiment_id])  # the same run, one more epoch
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert [step for step, _ in history_of(client, run.info.run_id, "val_loss")] == [0, 1, 2]
    assert "keeps its params" in err and "train.max_epochs=2 (now 3)" in err  # MLflow params cannot change

    config.write_text(BLOBS_CONFIG + "[callbacks.mlflow]\nexperimnt = 'x'\n")
    code, _, err = run_cli(capsys, "fit", config, "--run-dir", tmp_path / "bad")
    assert code == 2 and "callbacks.mlflow.experimnt" in err and "experiment" in err and not (tmp_path / "bad").exists()


def test_without_mlflow_construction_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match=r"^MLflowLogger needs mlflow: pip install gradloop\[mlflow\]$"):
        gl.MLflowLogger(experiment="x")
    write_blobs_csv(tmp_path / "blobs.csv")
    (tmp_path / "blobs.toml").write_text(BLOBS_CONFIG + "[callbacks.mlflow]\n")
    code, _, err = run_cli(capsys, "fit", tmp_path / "blobs.toml", "--run-dir", tmp_path / "run")
    assert code == 2 and "pip install gradloop[mlflow]" in err and len(err.strip().splitlines()) == 1


def test_bad_arguments_and_import_gradloop_leaves_mlflow_unloaded():
    with pytest.raises(TypeError, match="experiment must be a string"):
        gl.MLflowLogger(experiment=3)
    probe = "import sys, gradloop; print('mlflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
