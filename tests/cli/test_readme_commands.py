"""Every ``featpipe`` command README shows parses with the real command line: an option
renamed or removed, or a value the option no longer takes, fails here before a reader meets it.

Parsing only (click's ``make_context``, after featpipe's own argv expansion): nothing runs, so
commands that need a hub download, a GPU or a finished run (``<run>``) are checked too.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer._click.exceptions import UsageError

from featpipe.cli.app import app
from featpipe.cli.argv import expand

README = Path(__file__).parents[2] / "README.md"


def readme_commands() -> list[list[str]]:
    """The words after ``featpipe`` (or ``-m featpipe``) of each line of README's bash blocks,
    continuation lines joined and comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "featpipe" in words:
                commands.append(words[words.index("featpipe") + 1 :])
    return commands


def parse(words: list[str]) -> None:
    """Parse ``featpipe WORDS`` down to its command, raising what the CLI would raise."""
    args = expand(words)
    command = typer.main.get_command(app)
    path = "featpipe"
    ctx = command.make_context(path, [], resilient_parsing=True)
    while hasattr(command, "get_command"):  # a group: its next word names the command
        name, *args = args
        command = command.get_command(ctx, name)
        if command is None:
            raise UsageError(f"no command {name!r} under {path}")
        path += f" {name}"
        if hasattr(command, "get_command"):
            ctx = command.make_context(path, [], parent=ctx, resilient_parsing=True)
    command.make_context(path, args, parent=ctx)


def test_readme_shows_commands_of_every_stage() -> None:
    first_words = {words[0] for words in readme_commands()}
    assert {"datasets", "extract", "cache", "fit", "finetune", "advise", "predict"} <= first_words


@pytest.mark.parametrize("words", readme_commands(), ids=" ".join)
def test_readme_command_parses(words: list[str]) -> None:
    parse(words)


@pytest.mark.parametrize(
    "words",
    [
        ["extract", "data", "--backbon", "resnet18"],
        ["fit", "data", "--seeds", "two"],
        ["cache", "nosuch"],
        ["finetune", "data", "--epochs"],
    ],
)
def test_a_wrong_command_does_not_parse(words: list[str]) -> None:
    with pytest.raises(UsageError):
        parse(words)
