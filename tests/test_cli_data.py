"""Data for the command line: readers (CSV, NPZ, IDX), split and standardization, model zoo."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from gradloop.cli.config import validate
from gradloop.cli.datasets import RawData, load_raw, read_table
from gradloop.cli.errors import UsageError
from gradloop.cli.labels import infer_task, label_text
from gradloop.cli.models import build_model, cnn, from_factory, mlp
from gradloop.cli.prepare import DataSpec, prepare, split_indices
from gradloop.cli.readers import Table, read_csv, read_idx, read_idx_folder, read_npz


def write_idx(path, array):
    codes = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + big.tobytes())


def data_config(**data):
    return validate({"data": data}, "test").data


# ------------------------------------------------------------------------------------ readers
def test_csv_with_string_labels_and_quotes(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('a,"b",label\n1,2.5,cat\n3,"4",dog\n5,6, cat\n')
    table = read_csv(path, "label")
    assert table.features == ["a", "b"]
    np.testing.assert_array_equal(table.X, [[1, 2.5], [3, 4], [5, 6]])
    assert table.y.tolist() == ["cat", "dog", "cat"]


def test_csv_problems_name_file_column_and_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,target\n1,2,x\n3,oops,y\n")
    with pytest.raises(UsageError, match=r"d.csv: column 'b' is not numeric \(line 3: 'oops'\)"):
        read_csv(path, "target")
    with pytest.raises(UsageError, match=r"no target column 'label' \(set data.target\); columns: a, b, target"):
        read_csv(path, "label")
    path.write_text("a,b,target\n1,2,x\n3,4\n")
    with pytest.raises(UsageError, match="line 3 has 2 fields but the header has 3"):
        read_csv(path, "target")
    path.write_text("a,b,target\n")
    with pytest.raises(UsageError, match="no samples"):
        read_csv(path, "target")
    path.write_text("")
    with pytest.raises(UsageError, match="the file is empty"):
        read_csv(path, "target")


def test_csv_missing_values_become_nan_and_are_rejected_in_prepare(tmp_path):
    path = tmp_path / "d.csv"
    rows = "\n".join(f"{i},{'' if i == 5 else i},{i % 2}" for i in range(20))
    path.write_text("a,b,target\n" + rows + "\n")
    raw = load_raw(data_config(path=str(path)))
    assert np.isnan(raw.train.X[5, 1])
    with pytest.raises(UsageError, match=r"inputs contain NaN or Inf \(first at line 7, column 'b'\)"):
        prepare(raw, data_config(path=str(path)), seed=0)


def test_npz_needs_x_and_y(tmp_path):
    np.savez(tmp_path / "ok.npz", X=np.ones((4, 3)), y=np.arange(4))
    table = read_npz(tmp_path / "ok.npz")
    assert table.X.shape == (4, 3) and table.y.tolist() == [0, 1, 2, 3]
    np.savez(tmp_path / "bad.npz", X=np.ones((4, 3)), labels=np.arange(4))
    with pytest.raises(UsageError, match="needs arrays 'X' and 'y'; it has: X, labels"):
        read_npz(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="junk.npz: cannot be read"):
        read_npz(tmp_path / "junk.npz")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_gz_or_not(tmp_path, suffix):
    images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    labels = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
    table = read_idx_folder(tmp_path, "train")
    np.testing.assert_array_equal(table.X, images)
    np.testing.assert_array_equal(table.y, labels)
    assert read_idx_folder(tmp_path, "t10k", required=False) is None
    floats = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "f-ubyte", floats)
    np.testing.assert_array_equal(read_idx(tmp_path / "f-ubyte"), floats)


def test_idx_errors(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(UsageError, match="has no train-labels-idx1-ubyte"):
        read_idx_folder(tmp_path, "train")
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(UsageError, match="holds 3 images but train-labels-idx1-ubyte holds 4 labels"):
        read_idx_folder(tmp_path, "train")
    (tmp_path / "x-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(UsageError, match="bad magic number"):
        read_idx(tmp_path / "x-ubyte")
    (tmp_path / "y-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(UsageError, match="holds 2 bytes but its header promises 9"):
        read_idx(tmp_path / "y-ubyte")


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(UsageError, match="data file '.*nope.csv' does not exist"):
        read_table(tmp_path / "nope.csv", "target")
    (tmp_path / "d.txt").write_text("1")
    with pytest.raises(UsageError, match="unsupported data file"):
        read_table(tmp_path / "d.txt", "target")


# ------------------------------------------------------------------------------------ prepare
def test_task_inference():
    assert infer_task(np.array(["cat", "dog"]), "auto", "x") == "classification"
    assert infer_task(np.array(["1", "2"]), "auto", "x") == "classification"
    assert infer_task(np.array(["1.5", "2"]), "auto", "x") == "regression"
    assert infer_task(np.array([1, 2]), "auto", "x") == "classification"
    assert infer_task(np.array([1.0, 2.5]), "auto", "x") == "regression"
    assert infer_task(np.ones((3, 2)), "auto", "x") == "regression"
    assert infer_task(np.array([1, 2]), "regression", "x") == "regression"
    with pytest.raises(UsageError, match="data.task = 'regression' but the targets are text labels like 'cat'"):
        infer_task(np.array(["cat"]), "regression", "x")
    assert label_text(np.array([3.0, 1.0]), "x").tolist() == ["3", "1"]
    assert label_text(np.array([" 07", "1"]), "x").tolist() == ["7", "1"]


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.array([0] * 80 + [1] * 20)
    train, val = split_indices(labels, 100, 0.2, seed=3, where="x")
    assert len(val) == 20 and np.bincount(labels[val]).tolist() == [16, 4]
    assert not set(train) & set(val) and len(train) + len(val) == 100
    again = split_indices(labels, 100, 0.2, seed=3, where="x")
    np.testing.assert_array_equal(val, again[1])
    assert not np.array_equal(val, split_indices(labels, 100, 0.2, seed=4, where="x")[1])
    _, val = split_indices(None, 10, 0.3, seed=0, where="x")
    assert len(val) == 3
    with pytest.raises(UsageError, match="leaves no validation samples out of 10"):
        split_indices(None, 10, 0.01, seed=0, where="x")


def test_labels_standardization_and_spec(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, size=(60, 3))
    y = np.array(["dog", "cat", "eel"] * 20)
    raw = RawData("toy", Table(X, y, ["a", "b", "c"], "toy.csv"))
    prepared = prepare(raw, data_config(path="toy.csv"), seed=0)
    spec = prepared.spec
    assert spec.classes == ["cat", "dog", "eel"] and spec.task == "classification" and spec.num_outputs == 3
    Xt, yt = prepared.train
    Xv, yv = prepared.val
    assert Xt.dtype == np.float32 and yt.dtype == np.int64 and len(yv) == 12
    np.testing.assert_allclose(Xt.mean(axis=0), 0, atol=1e-5)  # fitted on the training split...
    np.testing.assert_allclose(Xt.std(axis=0), 1, atol=1e-5)
    assert np.abs(Xv.mean(axis=0)).max() > 1e-3  # ...and only applied to validation
    spec.save(tmp_path / "data.json")
    loaded = DataSpec.load(tmp_path / "data.json")
    assert loaded == spec
    reordered = Table(X[:4][:, [2, 0, 1]], None, ["c", "a", "b"], "new.csv")  # columns matched by name
    np.testing.assert_allclose(loaded.inputs(reordered), spec.inputs(Table(X[:4], None, ["a", "b", "c"], "x")))
    assert loaded.labels(np.array(["eel", "cat"]), "x").tolist() == [2, 0]
    with pytest.raises(UsageError, match="labels 'fox' are not among the run's classes"):
        loaded.labels(np.array(["fox"]), "new.csv")
    with pytest.raises(UsageError, match="missing feature columns c"):
        loaded.inputs(Table(X[:2, :2], None, ["a", "b"], "new.csv"))


def test_images_get_one_global_scale_and_flat_inputs_are_reshaped():
    images = np.random.default_rng(0).integers(0, 255, size=(30, 8, 8)).astype(np.uint8)
    raw = RawData("img", Table(images, np.arange(30) % 3, None, "img"))
    prepared = prepare(raw, data_config(path="img"), seed=0)
    assert prepared.spec.scale == "global" and len(prepared.spec.mean) == 1
    assert prepared.train[0].shape[1:] == (8, 8)
    flat = prepared.spec.inputs(Table(images.reshape(30, 64), None, None, "flat.npz"))
    np.testing.assert_allclose(flat, prepared.spec.inputs(raw.train))
    with pytest.raises(UsageError, match=r"samples have shape \(10,\) but the model takes \(8, 8\)"):
        prepared.spec.inputs(Table(np.zeros((2, 10)), None, None, "x.npz"))


def test_regression_targets_and_integer_label_mapping():
    X = np.random.default_rng(0).normal(size=(40, 2))
    raw = RawData("r", Table(X, X[:, 0] * 10 + 3, None, "r.npz"))
    prepared = prepare(raw, data_config(path="r.npz"), seed=0)
    assert prepared.spec.task == "regression" and prepared.train[1].shape == (32, 1)
    assert prepared.spec.target_mean is not None
    raw = RawData("c", Table(X, np.array([3, 5, 7, 5] * 10), None, "c.npz"))
    prepared = prepare(raw, data_config(path="c.npz"), seed=0)
    assert prepared.spec.classes == ["3", "5", "7"] and set(prepared.train[1].tolist()) == {0, 1, 2}


def test_bundled_datasets_keep_their_label_names():
    raw = load_raw(data_config(name="breast_cancer"))
    prepared = prepare(raw, data_config(name="breast_cancer"), seed=0)
    assert prepared.spec.classes == ["malignant", "benign"]
    digits = prepare(load_raw(data_config(name="digits")), data_config(name="digits"), seed=0)
    assert digits.spec.input_shape == [8, 8] and digits.spec.classes == [str(i) for i in range(10)]
    assert digits.spec.sizes == {"train": 1438, "val": 359, "test": 0}


# ------------------------------------------------------------------------------------ models
def model_config(**model):
    return validate({"data": {"name": "wine"}, "model": model}, "test").model


@pytest.mark.parametrize("shape", [(8, 8), (64,), (1, 8, 8), (28, 28), (3, 28, 28)])
def test_cnn_adapts_to_image_shapes(shape):
    net = cnn(model_config(name="cnn", channels=[4, 8]), shape, 10)
    assert net(torch.zeros(2, *shape)).shape == (2, 10)


def test_cnn_options_and_rejections():
    config = model_config(name="cnn", channels=[4, 8, 8], kernel_size=[5, 3, 3], pool="avg", batch_norm=True)
    assert cnn(config, (28, 28), 3)(torch.zeros(2, 28, 28)).shape == (2, 3)
    with pytest.raises(UsageError, match="model.name = 'cnn' needs image-shaped inputs"):
        cnn(model_config(name="cnn"), (13,), 3)
    with pytest.raises(UsageError, match="model.kernel_size has 2 entries for 3 model.channels"):
        cnn(model_config(name="cnn", channels=[4, 4, 4], kernel_size=[3, 3]), (8, 8), 3)


def test_mlp_layers():
    net = mlp(model_config(hidden=[16, 8], dropout=0.5, activation="gelu", batch_norm=True), (2, 3), 4)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "GELU", "Dropout", "Linear", "BatchNorm1d", "GELU", "Dropout", "Linear"]
    assert net(torch.zeros(5, 2, 3)).shape == (5, 4)


def test_regression_models_predict_in_data_units():
    spec = DataSpec("r", "regression", [2], 1, target_mean=[100.0], target_std=[10.0])
    net = build_model(model_config(hidden=[4]), spec)
    torch.nn.init.zeros_(net[-2].weight), torch.nn.init.zeros_(net[-2].bias)
    assert net(torch.zeros(3, 2)).flatten().tolist() == [100.0] * 3
    assert set(dict(net.named_buffers())) == {"4.mean", "4.std"}


def test_factory_models(tmp_path):
    (tmp_path / "zoo_for_test.py").write_text(
        "import torch\n"
        "def make(input_shape, num_outputs, width=4):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0], width), torch.nn.Linear(width, num_outputs))\n"
        "def broken(input_shape, num_outputs):\n    raise RuntimeError('no way')\n"
        "def not_a_model(input_shape, num_outputs):\n    return 3\n"
    )
    net = from_factory("zoo_for_test:make", (5,), 2, {"width": 7}, [Path(tmp_path)])
    assert net[1].out_features == 7 and net(torch.zeros(1, 5)).shape == (1, 2)
    with pytest.raises(UsageError, match="cannot import 'no_such_module_xyz'"):
        from_factory("no_such_module_xyz:make", (5,), 2, {}, [tmp_path])
    with pytest.raises(UsageError, match="has no attribute 'nope'"):
        from_factory("zoo_for_test:nope", (5,), 2, {}, [tmp_path])
    with pytest.raises(UsageError, match=r"calling broken\(input_shape=\(5,\), num_outputs=2\) failed: RuntimeError: no way"):
        from_factory("zoo_for_test:broken", (5,), 2, {}, [tmp_path])
    with pytest.raises(UsageError, match="the factory returned int, not a torch.nn.Module"):
        from_factory("zoo_for_test:not_a_model", (5,), 2, {}, [tmp_path])
