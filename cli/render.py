"""Rich output helpers shared by the commands: one console, sizes, dates, the activity line."""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def console(stderr: bool = False) -> Console:
    """A console bound to the current stdout/stderr (created per call, so tests capture it).

    Piped or captured output gets a wide virtual terminal, so tables are not squeezed to 80
    columns in logs, unless ``COLUMNS`` says how wide it is. Emoji codes are off: a value such
    as ``--progressive 0:abc`` must print as written, not with ``:abc:`` turned into a picture.
    """
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width, emoji=False)


def plain(text: str, stderr: bool = False) -> None:
    """Print text that comes from data (paths, summaries, commands) without reading markup in
    it: ``[torch bf16, batch 8]`` or ``data[1]/x.png`` must print as written."""
    console(stderr).print(text, markup=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_count(n: int) -> str:
    """Parameter counts as people write them: 4.01M, 12.3k."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def human_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


class RateColumn(ProgressColumn):
    """Images per second since the bar started."""

    def render(self, task: Task) -> Text:
        speed = task.fields.get("rate")
        return Text(f"{speed:6.1f} img/s" if speed else "   --- img/s", style="cyan")


class WhenCounting(ProgressColumn):
    """A column shown only while there is something to count (batches); a step of unknown
    length (building a model, fitting heads) shows the spinner and its description alone."""

    def __init__(self, column: ProgressColumn) -> None:
        super().__init__()
        self.column = column

    def render(self, task: Task) -> Any:
        return self.column.render(task) if task.total is not None else Text("")


class Activity:
    """One live line on stderr from the first second of a command to its last.

    A spinner says what is happening (``status``: scanning, reading the cache, building the
    model, probing its speed, fitting heads); while batches run (``update``) it becomes a
    progress bar with a rate and an ETA. Warnings print above it. The line disappears when the
    command ends, and is not drawn where stderr is no terminal: a log keeps only the command's
    own output and its warnings.
    """

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", style="bold", markup=False),
            WhenCounting(BarColumn()),
            WhenCounting(MofNCompleteColumn()),
            WhenCounting(RateColumn()),
            TimeElapsedColumn(),
            WhenCounting(TextColumn("ETA")),
            WhenCounting(TimeRemainingColumn()),
            console=console(stderr=True),
            transient=True,
        )
        self.task = self.bar.add_task(description, total=None, rate=0.0)
        # A log or a pipe gets the command's output alone (and its warnings).
        self.drawn = self.bar.console.is_terminal

    def __enter__(self) -> Activity:
        if self.drawn:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.drawn:
            self.bar.stop()

    def say(self, text: str) -> None:
        """A step of unknown length: the spinner and this text."""
        self.bar.update(self.task, description=text, total=None, completed=0)
        if self.drawn:
            self.bar.refresh()  # a step is news at once, not at the next tick

    def status(self, phase: Any) -> None:
        """A stage's :class:`~featpipe.progress.Phase`: a warning is printed above
        the line (it must stay readable); every other phase becomes the spinner's text."""
        if getattr(phase, "name", "") == "warning":
            self.bar.console.print(f"warning: {phase}", markup=False, highlight=False)
        else:
            self.say(str(phase))

    def update(self, done: int, total: int, rate: float, description: str | None = None) -> None:
        """Batches: the progress bar."""
        self.bar.update(
            self.task,
            completed=done,
            total=total,
            rate=rate,
            description=description or self.description,
        )


def progress_bar(description: str) -> Activity:
    """The activity line of a command (a context manager), shown from its first second."""
    return Activity(description)
