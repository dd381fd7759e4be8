"""The activity line: what a person sees on a terminal before the first batch and while heads
are fitted. stderr is a pseudo-terminal here, as in a shell, because rich draws the line only
on a terminal (a log or a pipe gets the command's output alone)."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

from conftest import FEATPIPE, TINY, console_script, flags

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run the console script with stderr on a pseudo-terminal: (status, stdout, terminal)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen(
        [str(FEATPIPE), *map(str, args)], stdout=subprocess.PIPE, stderr=follower, env=env
    )
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the pty closes when the process ends
            break
        if not chunk:
            break
        screen += chunk
    out = proc.stdout.read().decode() if proc.stdout else ""
    os.close(leader)
    return proc.wait(), out, ANSI.sub("", screen.decode(errors="replace"))


def test_steps_before_the_first_batch_and_the_fitting_are_shown(tree: Path, tmp_path) -> None:
    code, out, screen = on_a_terminal(
        "fit",
        tree,
        *flags(TINY),
        "--cache-dir",
        tmp_path / "cache",
        "--runs-dir",
        tmp_path / "runs",
        "--sweep",
        "head=logreg,ridge",
    )
    assert code == 0, screen
    assert "building test_efficientnet" in screen
    assert "fitting 2 head configs × 1 seeds" in screen
    assert "leaderboard" in out and "leaderboard" not in screen  # the line is stderr's alone


def test_a_pipe_gets_no_activity_line(tree: Path, tmp_path) -> None:
    done = console_script("extract", tree, *flags(TINY), "--cache-dir", tmp_path / "c")
    assert done.returncode == 0 and done.stderr == "", done.stderr
