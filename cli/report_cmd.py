"""``featpipe report``: an HTML report with plots over every run."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as opt
from .render import plain


def report(
    runs_dir: Path = opt.RunsDir,
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Output directory."),
) -> None:
    """Write an HTML report with plots over every run (sweeps, few-shot, confusion, curves)."""
    from featpipe.reports.report import report as write_report  # matplotlib: only here

    page = write_report(runs_dir, out)
    plain(f"wrote {page}")
