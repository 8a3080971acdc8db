"""The TOML config schema: validation messages, --set overrides, the resolved config file."""

import sys

import pytest

from gradloop.cli.config import Config, load_config, validate
from gradloop.cli.errors import UsageError
from gradloop.cli.tomlfile import apply_overrides, parse_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

WINE = {"data": {"name": "wine"}}


def error_of(raw):
    with pytest.raises(UsageError) as info:
        validate(raw, "run.toml")
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({**WINE, "train": {"lrr": 0.1}}, "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ({**WINE, "trian": {}}, "unknown section 'trian' (did you mean 'train'?)"),
        ({**WINE, "callbacks": {"early_stoping": {}}}, "(did you mean 'callbacks.early_stopping'?)"),
        ({**WINE, "callbacks": {"early_stopping": {"patiense": 3}}}, "did you mean 'callbacks.early_stopping.patience'?"),
        ({**WINE, "model": {"hiden": [3]}}, "did you mean 'model.hidden'?"),
    ],
)
def test_unknown_keys_suggest_the_right_one(raw, expected):
    assert expected in error_of(raw)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({**WINE, "train": {"lr": "fast"}}, "train.lr must be a number; got 'fast'"),
        ({**WINE, "train": {"lr": -1.0}}, "train.lr must be greater than 0; got -1.0"),
        ({**WINE, "train": {"max_epochs": 2.5}}, "train.max_epochs must be an integer; got 2.5"),
        ({**WINE, "train": {"max_epochs": "10"}}, "train.max_epochs must be an integer; got '10'"),
        ({**WINE, "train": {"seed": True}}, "train.seed must be an integer; got true"),
        ({"data": {"name": "wine", "val_split": 1.5}}, "data.val_split must be less than 1; got 1.5"),
        ({"data": {"name": "wine", "batch_size": 0}}, "data.batch_size must be greater than or equal to 1"),
        ({**WINE, "model": {"hidden": [64, "a"]}}, "model.hidden[1] must be an integer; got 'a'"),
        ({**WINE, "model": {"hidden": [64, 0]}}, "model.hidden: every entry must be a positive integer"),
        ({**WINE, "model": {"dropout": 1.0}}, "model.dropout must be less than 1"),
        ({**WINE, "callbacks": {"early_stopping": 3}}, "callbacks.early_stopping must be a table; got 3"),
        ({"data": "wine"}, "data must be a table"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(raw, expected):
    assert expected in error_of(raw)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"data": {"name": "wne"}}, "unknown bundled dataset 'wne' (did you mean 'wine'?)"),
        ({**WINE, "model": {"name": "mpl"}}, "unknown model 'mpl' (did you mean 'mlp'?)"),
        ({**WINE, "model": {"activation": "rlu"}}, "did you mean 'relu'?"),
        ({**WINE, "train": {"optimizer": "adamm"}}, "unknown optimizer 'adamm' (did you mean 'adam'?)"),
        ({**WINE, "train": {"loss": "crossentropyy"}}, "train.loss: unknown loss 'crossentropyy'"),
        ({**WINE, "train": {"metrics": ["accuracy", "f2"]}}, "train.metrics: unknown metric 'f2'"),
        ({**WINE, "train": {"precision": "64"}}, "train.precision: unknown precision '64'"),
    ],
)
def test_unknown_names(raw, expected):
    assert expected in error_of(raw)


def test_the_data_source_is_required_and_unique():
    assert "missing [data] section" in error_of({})
    assert "exactly one of data.name" in error_of({"data": {}})
    assert "exactly one of data.name" in error_of({"data": {"name": "wine", "path": "x.csv"}})
    assert "data.val_path and data.val_split" in error_of({"data": {"path": "a.csv", "val_path": "b.csv", "val_split": 0.3}})


def test_several_problems_report_the_first_and_count_the_rest():
    message = error_of({**WINE, "train": {"lr": -1.0, "max_epochs": 0}})
    assert message.startswith("run.toml: train.lr") and "(and 1 more problem)" in message


def test_overrides_are_toml_values_or_strings():
    raw = apply_overrides(
        {"data": {"name": "iris"}},
        [
            "train.lr=0.01",
            "model.hidden=[64, 32]",
            "data.name=wine",
            "data.standardize=false",
            "callbacks.early_stopping.patience=3",
            'train.loss="mse"',
            "train.precision=16",
        ],
    )
    config = validate(raw, "x")
    assert config.train.lr == 0.01 and config.model.hidden == [64, 32] and config.data.name == "wine"
    assert config.data.standardize is False and config.callbacks.early_stopping.patience == 3
    assert config.train.loss == "mse" and config.train.precision == "16-mixed"
    assert parse_value("1e-3") == 0.001 and parse_value("runs/a b") == "runs/a b"


@pytest.mark.parametrize("bad", ["foo", "train=3", ".lr=1", "train.=1"])
def test_malformed_overrides(bad):
    with pytest.raises(UsageError, match="expected section.key=value"):
        apply_overrides({}, [bad])


def test_override_cannot_index_into_a_value():
    with pytest.raises(UsageError, match="is a value, not a section"):
        apply_overrides({"data": {"name": "wine"}}, ["data.name.x=1"])


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="config file 'nope.toml' does not exist"):
        load_config("nope.toml")
    (tmp_path / "broken.toml").write_text("[data\nname = 'wine'\n")
    with pytest.raises(UsageError, match=r"broken.toml: invalid TOML: .*line 1"):
        load_config(tmp_path / "broken.toml")
    with pytest.raises(UsageError, match="is a directory"):
        load_config(tmp_path)


def test_resolved_toml_round_trips():
    config = validate(
        {
            "data": {"path": "/data/x.csv", "target": "label"},
            "model": {"name": "pkg.mod:make", "options": {"width": 3, "sizes": [1, 2]}},
            "train": {"metrics": ["accuracy"], "max_epochs": 3},
            "callbacks": {"early_stopping": {"patience": 2}, "terminate_on_nan": {}},
        },
        "x",
    )
    text = config.to_toml()
    assert "hidden" not in text  # keys the factory does not use are left out
    assert 'metrics = ["accuracy"]' in text and "options = { width = 3, sizes = [1, 2] }" in text
    parsed = tomllib.loads(text)
    assert parsed == config.resolved()
    assert validate(parsed, "again") == config


def test_mlp_config_leaves_out_cnn_keys_and_bundled_leaves_out_target():
    resolved = Config.model_validate({"data": {"name": "wine"}}).resolved()
    assert "channels" not in resolved["model"] and "target" not in resolved["data"]
    assert "channels" in Config.model_validate({"data": {"name": "digits"}, "model": {"name": "cnn"}}).resolved()["model"]
