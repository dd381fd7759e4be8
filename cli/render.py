"""Rich output helpers shared by the commands: one console, sizes, dates, progress."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def console(stderr: bool = False) -> Console:
    """A console bound to the current stdout/stderr (created per call, so tests capture it).

    Piped or captured output gets a wide virtual terminal, so tables are not squeezed to 80
    columns in logs.
    """
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


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


class LazyProgress:
    """A progress bar that appears at the first update, so a run that fails early or hits the
    cache prints no empty bar."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: Progress | None = None
        self.task = None

    def update(self, done: int, total: int, rate: float, description: str | None = None) -> None:
        if self.bar is None:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console(stderr=True),
            )
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total, rate=0.0)
        self.bar.update(
            self.task,
            completed=done,
            total=total,
            rate=rate,
            description=description or self.description,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextmanager
def progress_bar(description: str) -> Iterator[LazyProgress]:
    bar = LazyProgress(description)
    try:
        yield bar
    finally:
        bar.close()
