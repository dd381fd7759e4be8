"""Usage errors, --version and --help, through the installed console script.

What a person meets in a terminal is the behaviour under test, so these run
``.venv/bin/featpipe`` in a subprocess: exit status, one line on stderr, no traceback.
"""

from __future__ import annotations

import subprocess

import pytest
import typer

from conftest import FEATPIPE, console_script


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "data", "--backbon", "resnet18"], "No such option: --backbon"),
        (["extract"], "Missing argument 'data'"),
        (["fit", "data", "--seeds", "two"], "Invalid value for '--seeds'"),
        (["extact", "data"], "No such command 'extact'. Did you mean 'extract'?"),
        (["cache", "info"], "Missing argument 'entry'"),
        (["results", "--limit"], "Option '--limit' requires an argument"),
    ],
)
def test_usage_errors_are_one_line_with_status_2(args, message, tmp_path) -> None:
    done = console_script(*args, cwd=tmp_path, columns=160)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "--help" in lines[0]  # where to read on


@pytest.mark.parametrize(("command", "value"), [("extract", "1.5"), ("finetune", "0")])
def test_crop_pct_outside_0_1_is_refused_before_any_work(command, value, tmp_path) -> None:
    done = console_script(command, tmp_path, "--crop-pct", value, columns=160)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"error: --crop-pct {float(value)}: use a fraction in (0, 1]; 1 keeps the whole image"
    )


def test_version_names_featpipe_torch_timm_and_device() -> None:
    done = console_script("--version", columns=160)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    for part in ("featpipe 0.", "torch 2.", "timm 1.", "device "):
        assert part in line
    assert "device cpu (" in line or "device cuda (" in line


def test_bare_group_prints_its_help() -> None:
    done = console_script("cache", columns=160)
    assert done.returncode == 0 and "Commands" in done.stdout and "ls" in done.stdout


def _commands() -> list[tuple[str, typer.core.TyperCommand]]:
    from featpipe.cli.app import app

    out = []

    def walk(prefix: str, command) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            if hasattr(sub, "commands"):
                walk(f"{prefix} {name}", sub)
            else:
                out.append((f"{prefix} {name}".strip(), sub))

    walk("", typer.main.get_command(app))
    return out


def test_every_option_and_argument_is_described() -> None:
    missing = [
        f"{name} {param.name}"
        for name, command in _commands()
        for param in command.params
        if not (param.help or "").strip()
    ]
    assert not missing


@pytest.mark.parametrize("command", ["extract", "finetune", "cache info", "predict"])
def test_help_reads_like_click(command: str) -> None:
    done = console_script(*command.split(), "--help", columns=160)
    assert done.returncode == 0
    text = done.stdout
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage  # required arguments read DATA, not {data}
    options = [line for line in text.splitlines() if line.lstrip("│ ").startswith("-")]
    assert len(options) > 1
    for line in options:  # click's metavars (TEXT, INTEGER, PATH) where a value is taken
        assert not any(tag in line for tag in ("<bool>", "<str>", "<int>", "<float>", "<path>"))
    assert "Show this message and exit." in text


def test_help_prints_brackets_as_written() -> None:
    """Help text is prose: ``MODEL[@WEIGHTS]`` must not be eaten as rich markup."""
    done = console_script("fit", "--help", columns=160)
    assert "MODEL[@WEIGHTS]" in done.stdout


@pytest.mark.parametrize("args", [["--help"], ["datasets", "ls"]])
def test_a_reader_that_left_early_gets_no_traceback(args: list[str]) -> None:
    """``featpipe … | head``: the pipe is closed before the program writes; it stops quietly
    (status 1 from click's broken-pipe handling, seen here), never with a traceback."""
    proc = subprocess.Popen(
        [str(FEATPIPE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=600) in (0, 1) and err == "", err
