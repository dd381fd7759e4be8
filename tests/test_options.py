"""Options declared once (featpipe.options): constraints, messages, and the CLI built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from featpipe.cli.app import app
from featpipe.cli.options import with_options
from featpipe.errors import ArgumentError
from featpipe.extraction.options import ExtractOptions
from featpipe.finetuning.config import FinetuneConfig
from featpipe.fitting.options import SweepOptions
from featpipe.options import Interval, OneOf, auto_int, check, declared, floats, given, option


@dataclass(frozen=True)
class Toy:
    mode: str = option("a", constraint=OneOf(("a", "b")), help="a | b")
    share: float = option(0.5, constraint=Interval(0, 1, "right"), help="a share")
    count: int | None = option(None, constraint=Interval(1), help="how many")
    hidden: int = option(0, cli=False, help="Python only")

    def __post_init__(self) -> None:
        check(self)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "c"}, "mode c: choose one of a, b"),
        ({"share": 0.0}, "share 0.0: use a value in (0, 1]"),
        ({"share": 1.5}, "share 1.5: use a value in (0, 1]"),
        ({"share": float("nan")}, "share nan: use a value in (0, 1]"),
        ({"count": 0}, "count 0: use 1 or more"),
    ],
)
def test_a_broken_constraint_names_the_option_and_what_to_use(kwargs, message) -> None:
    with pytest.raises(ArgumentError) as caught:
        Toy(**kwargs)
    assert str(caught.value) == message
    assert caught.value.param == next(iter(kwargs))


def test_values_inside_the_constraints_and_unset_optionals_pass() -> None:
    assert Toy(mode="b", share=1.0, count=1).share == 1.0
    assert Toy(count=None).count is None  # an optional left unset is not checked
    assert [o.name for o in declared(Toy)] == ["mode", "share", "count", "hidden"]


def test_interval_ends_and_descriptions() -> None:
    assert Interval(0, None, "neither").describe() == "more than 0"
    assert Interval(None, 1).describe() == "1 or less"
    assert Interval(0, 1, "left").ok(0) and not Interval(0, 1, "left").ok(1)
    assert not Interval(0).ok(True)  # a boolean is not a number here
    assert Interval(2, what="2 or more (batches)").message(1) == "1: use 2 or more (batches)"


def test_command_line_parsers_name_the_option() -> None:
    assert auto_int("auto", "workers") is None and auto_int("3", "workers") == 3
    with pytest.raises(ArgumentError, match="workers many: use a whole number or auto"):
        auto_int("many", "workers")
    assert floats("0.1,1", "lr_mult") == (0.1, 1.0) and floats(None, "lr_mult") is None
    with pytest.raises(ArgumentError, match=r"lr_mult 0\.1,x: write numbers"):
        floats("0.1,x", "lr_mult")


def _command(name: str) -> Any:
    """The click command typer builds for ``name`` (typer bundles its own click)."""
    return get_command(app).commands[name]  # type: ignore[attr-defined]


# Every command whose options a library dataclass declares: (command, dataclass, excluded).
GENERATED = [
    ("finetune", FinetuneConfig, ()),
    *((command, ExtractOptions, ()) for command in ("extract", "fit", "compare", "advise")),
    ("fit", SweepOptions, ()),
    ("compare", SweepOptions, ()),
]


@pytest.mark.parametrize(("command", "cls", "exclude"), GENERATED)
def test_the_command_line_and_the_library_agree(command, cls, exclude) -> None:
    """Each declared option is a flag of the command, with the library's default: the CLI and
    the library cannot drift apart, because the flags are made from the declaration."""
    params = {p.name: p for p in _command(command).params}
    for o in declared(cls):
        if not o.spec.cli or o.name in exclude:
            assert o.name not in params
            continue
        param = params[o.name]
        assert o.flag in param.opts, (o.name, param.opts)
        assert o.from_cli(param.default) == o.default, o.name
        assert param.help == o.spec.help


def test_a_generated_command_parses_into_the_dataclass() -> None:
    seen = []
    demo = typer.Typer()

    @demo.command()
    @with_options(Toy, "toy")
    def run(name: str = typer.Argument("x"), *, toy: Toy) -> None:
        seen.append((name, toy))

    runner = CliRunner()
    result = runner.invoke(demo, ["y", "--mode", "b", "--share", "0.25"])
    assert result.exit_code == 0, result.output
    assert seen == [("y", Toy(mode="b", share=0.25))]
    assert runner.invoke(demo, ["--hidden", "3"]).exit_code != 0  # cli=False: not a flag


def test_extract_options_are_checked_once_and_given_as_keywords_on_top(tmp_path) -> None:
    with pytest.raises(ArgumentError, match="engine onnxruntime runs fp32, not bf16"):
        ExtractOptions(engine="onnxruntime", precision="bf16")
    with pytest.raises(ArgumentError, match="batch_size 0: use a positive number or auto"):
        ExtractOptions(batch_size=0)
    options = ExtractOptions(pool="max").merged({"cache_dir": str(tmp_path)})
    assert options.cache_dir == tmp_path and options.pool == "max"
    assert given(options) == {"pool": "max", "cache_dir": tmp_path}
    with pytest.raises(ArgumentError, match="poool is not an extract option"):
        ExtractOptions().merged({"poool": "max"})


def test_sweep_options_parse_shots_once_whatever_their_shape() -> None:
    assert SweepOptions(shots=[1, "5", "all"]).shots == (1, 5, "all")
    assert SweepOptions(shots="1,all").shots == (1, "all")
    with pytest.raises(ArgumentError, match="shots 0: use positive whole numbers"):
        SweepOptions(shots=[0])
    with pytest.raises(ArgumentError, match="cv 1: use 2 or more folds"):
        SweepOptions(cv=1)
