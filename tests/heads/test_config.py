"""The head config: one parser for --set, --sweep, grid files and Python; one recorded shape;
labels that show what was set; one-line errors that name the option and where it came from."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from conftest import console_script
from featpipe.errors import ArgumentError
from featpipe.heads.config import (
    DEFAULTS,
    HeadConfig,
    expand,
    parse_assignments,
    parse_grid,
    parse_grid_args,
    read_grid_file,
)
from featpipe.heads.estimator import Head
from featpipe.heads.fitted import FittedHead, fit_heads
from featpipe.heads.train_data import TrainData

GRID_FILES = {
    "g.toml": 'head = ["mlp"]\nlr = [1e-3, 0.01]\nhidden = 64\nbn = false\ndropout = "0.3"\n',
    "g.yaml": "sweep:\n  head: mlp\n  lr: [0.001, 1e-2]\n  hidden: 64\n  bn: false\n"
    "  dropout: 0.3\n",
    "g.json": '{"head": "mlp", "lr": [0.001, 0.01], "hidden": 64.0, "bn": "no", "dropout": 0.3}',
}
EXPECTED = {"head": ["mlp"], "lr": [1e-3, 1e-2], "hidden": [64], "bn": [False], "dropout": [0.3]}


@pytest.mark.parametrize("name", sorted(GRID_FILES))
def test_grid_files_sweep_items_and_set_parse_to_the_same_typed_values(tmp_path, name) -> None:
    path = tmp_path / name
    path.write_text(GRID_FILES[name])
    from_file = read_grid_file(path)
    from_cli = parse_grid_args(["head=mlp", "lr=1e-3,0.01", "hidden=64", "bn=false", "dropout=.3"])
    assert from_file == from_cli == EXPECTED
    assert [type(v) for v in from_file["hidden"] + from_file["bn"]] == [int, bool]
    fixed = parse_assignments(["hidden=64", "bn=false", "dropout=0.3", "head=mlp"])
    assert fixed == {k: v[0] for k, v in EXPECTED.items() if k != "lr"}
    assert parse_grid({"hidden": "64", "lr": ["1e-3", 0.01]}) == {
        "hidden": [64],
        "lr": [1e-3, 1e-2],
    }


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_assignments(["lr=abc"]), "set lr=abc: expected a number, e.g. lr=0.1"),
        (lambda: parse_assignments(["lr=1,2"]), "set lr=1,2: write option=value (one value"),
        (lambda: parse_grid_args(["epochs=ten"]), "sweep epochs=ten: expected a whole number"),
        (lambda: parse_grid_args(["epochs=2.5"]), "sweep epochs=2.5: expected a whole number"),
        (lambda: parse_grid_args(["head=svm"]), "sweep head=svm: choose one of linear, mlp"),
        (lambda: parse_grid_args(["dropout=1"]), "sweep dropout=1: must be a share in [0, 1)"),
        (lambda: parse_grid_args(["lrr=1"]), "sweep lrr: unknown head option (did you mean lr?)"),
        (lambda: parse_grid({"bn": 3}), "grid bn=3: expected true or false"),
        (lambda: parse_grid({"epochs": True}), "grid epochs=True: expected a whole number"),
        (lambda: HeadConfig(lr="fast"), "lr 'fast': expected a number"),
        (lambda: HeadConfig(k=0), "k 0: must be 1 or more neighbours"),
        (lambda: HeadConfig.from_dict({"lr": "x"}, param="head"), "head lr=x: expected a number"),
    ],
)
def test_bad_options_are_one_line_argument_errors_naming_the_option(call, message) -> None:
    with pytest.raises(ArgumentError) as caught:
        call()
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_bad_grid_file_names_the_file_and_the_option(tmp_path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('lr = ["fast"]\n')
    with pytest.raises(ArgumentError, match=r"grid .*g.toml: lr=fast: expected a number"):
        read_grid_file(path)
    path.write_text("lr = [1e-3\n")
    with pytest.raises(ArgumentError, match=r"g.toml: not valid toml"):
        read_grid_file(path)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--set", "lr=abc"], "error: --set lr=abc: expected a number, e.g. lr=0.1"),
        (["--sweep", "lr=1e-3,abc"], "error: --sweep lr=abc: expected a number"),
        (["--set", "dropout=2"], "error: --set dropout=2: must be a share in [0, 1)"),
        (["--head", "svm"], "error: --head 'svm': choose one of linear, mlp, logreg"),
    ],
)
def test_cli_option_errors_name_the_flag(tmp_path, args, line) -> None:
    done = console_script("fit", tmp_path / "nowhere", *args, columns=200)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr


def test_one_recorded_shape_reads_back_and_old_shapes_still_read() -> None:
    config = HeadConfig(head="mlp", hidden=64, dropout=0.3, lr=1e-2)
    record = config.to_dict()
    assert "C" not in record and "k" not in record  # options an MLP ignores are not recorded
    assert json.loads(json.dumps(record)) == record  # JSON-ready, typed
    assert HeadConfig.from_dict(record) == config
    old_head_json = asdict(config)  # head/head.json and request.configs held every option
    old_set_strings = {"head": "mlp", "hidden": "64", "dropout": "0.3", "lr": "0.01"}  # --set
    row = {**{k: str(v) for k, v in record.items()}, "val_accuracy": "0.9", "run": "x"}
    assert HeadConfig.from_dict(old_head_json) == config
    assert HeadConfig.from_dict(old_set_strings) == config
    assert HeadConfig.from_dict(row, ignore_unknown=True) == config
    with pytest.raises(ArgumentError, match="val_accuracy: unknown head option"):
        HeadConfig.from_dict(row)


def test_configs_are_equal_when_they_are_the_same_model() -> None:
    assert HeadConfig(head="knn", lr=0.5) == HeadConfig(head="knn")
    assert HeadConfig(head="linear", lr=0.5) != HeadConfig(head="linear")
    assert len({HeadConfig(head="knn", lr=x) for x in (0.1, 0.2)}) == 1
    assert len(expand({"head": ["knn", "linear"], "lr": [0.1, 0.2]})) == 3


def test_label_shows_every_non_default_option() -> None:
    assert HeadConfig(head="mlp", hidden=64, dropout=0.3).label() == "mlp(hidden=64, dropout=0.3)"
    assert HeadConfig(head="linear").label() == "linear()"
    assert HeadConfig(head="knn", lr=0.5, k=5).label() == "knn(k=5)"  # lr: unused by k-NN
    varied = HeadConfig(head="linear", lr=3e-3, wd=0.01).label(vary=["lr"])
    assert varied == "linear(lr=0.003, wd=0.01)"  # varied options shown even at their default


def test_saved_head_json_is_the_recorded_shape_and_old_files_load(tmp_path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    config = HeadConfig(head="logreg", C=0.5)
    [head] = fit_heads([config], TrainData(X, y, None, None, ["a", "b"], "classification"))
    head.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "head.json").read_text())
    assert meta["config"] == config.to_dict()
    meta["config"] = {k: str(v) for k, v in asdict(config).items()}  # an older, looser shape
    (tmp_path / "h" / "head.json").write_text(json.dumps(meta))
    assert FittedHead.load(tmp_path / "h").config == config


def test_estimator_parameters_are_the_config_options() -> None:
    """Head's keyword parameters and HeadConfig's fields are one list with one set of defaults."""
    assert Head().get_params() == DEFAULTS
