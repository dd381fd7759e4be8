"""``featpipe compare``: backbones × datasets, one leaderboard."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.table import Table

from featpipe.errors import FeatpipeError
from featpipe.extraction.options import ExtractOptions
from featpipe.fitting.options import SweepOptions
from featpipe.options import given
from featpipe.reports.compare import (
    Experiment,
    Row,
    Standing,
    read_experiment,
    row_names,
    standings,
)
from featpipe.reports.compare import compare as run_compare
from featpipe.stats import Interval
from featpipe.stats.paired import format_p

from . import options as opt
from .fit_cmd import GridOption, SetOption, SweepOption, grid_from, parse_fixed
from .render import console, plain, progress_bar


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _score(value: float, interval: Interval | None) -> str:
    """``0.682 [0.53, 0.81]``: the score with its 95% interval (bare for an old run)."""
    return interval.format() if interval is not None else _num(value)


def _gap(row: Row) -> str:
    """Pretrained − random on test, in points, with its paired interval."""
    if row.gap is None:
        return ""
    if row.gap_interval is None:
        return _num(row.gap, 3)
    return row.gap_interval.format(100, extra_digit=False)


def _against(standings: list[Standing]) -> dict[tuple[str, str], str]:
    """(dataset, row name) → ``best``, ``tied (p = 0.41)`` or ``worse (p = 0.006)``."""
    cells = {}
    for standing in standings:
        ranking = standing.ranking
        if ranking is None:
            continue
        cells[(standing.dataset, ranking.best)] = "best"
        for c in ranking.comparisons:
            verdict = "tied" if c.tied else "worse"
            cells[(standing.dataset, c.name)] = f"{verdict} ({format_p(c.p_holm)})"
    return cells


def leaderboard(rows: list[Row], standings: list[Standing] | None = None) -> Table:
    metric = rows[0].metric if rows else "accuracy"
    against = _against(standings or [])
    table = Table(
        title=f"backbone × dataset leaderboard (by val {metric}; scores with their 95% interval, "
        "on n test images; vs random: pretrained − random init, in points)"
    )
    for column in (
        "dataset",
        "backbone",
        "best head",
        f"val {metric}",
        f"test {metric}",
        "test macro-F1",
        "vs random",
        "n",
        "vs best",
        "time s",
    ):
        left = column in ("dataset", "backbone", "best head")
        # scores keep their interval on one line; names wrap when the table is too wide
        table.add_column(column, justify="left" if left else "right", no_wrap=not left)
    names = {}
    for dataset in dict.fromkeys(r.dataset for r in rows):
        group = [r for r in rows if r.dataset == dataset]
        names.update({id(r): n for r, n in zip(group, row_names(group), strict=True)})
    for row in sorted(rows, key=lambda r: (r.dataset, -r.val)):
        table.add_row(
            row.dataset,
            row.backbone,
            row.chosen,
            _score(row.val, row.val_interval),
            _score(row.test, row.test_interval),
            _score(row.macro_f1, row.macro_f1_interval),
            _gap(row),
            str(row.test_interval.n) if row.test_interval else "",
            against.get((row.dataset, names[id(row)]), ""),
            f"{_num(row.extract_seconds, 1)}+{_num(row.fit_seconds, 1)}",  # extract + fit
        )
    return table


def print_verdicts(rows: list[Row], standings: list[Standing]) -> None:
    """Per dataset, the paired verdict (one split's test images, and across repeated splits),
    then each run's warnings."""
    for standing in standings:
        if standing.ranking is not None:
            n = standing.ranking.best_score.n
            plain(f"{standing.dataset}, on the same {n} test images: {standing.ranking}")
        else:
            plain(f"{standing.dataset}: no paired comparison ({standing.note})")
        if standing.splits is not None:
            splits = standing.splits.best_score.n
            plain(f"{standing.dataset}, paired over {splits} splits: {standing.splits}")
    for row in rows:
        for line in row.warnings:
            plain(f"warning: {row.dataset} · {row.backbone}: {line}")


@opt.with_extract_options
@opt.with_options(SweepOptions, "sweeping", panel="Sweep options")
def compare(
    data: list[str] = typer.Option(
        [], "--data", "-d", help="Datasets: folders or CSV manifests (several allowed)."
    ),
    backbone: list[str] = typer.Option(
        [], "--backbone", "-b", help="MODEL[@WEIGHTS] specs (several); add @none controls."
    ),
    experiment: Path | None = typer.Option(
        None,
        "--experiment",
        "-e",
        help="TOML/YAML experiment file instead of --data/--backbone and the head options; "
        "extraction options typed here override its [extract] table.",
    ),
    sweep: list[str] = SweepOption,
    set_: list[str] = SetOption,
    grid: Path | None = GridOption,
    runs_dir: Path = opt.RunsDir,
    *,
    sweeping: SweepOptions,
    extraction: ExtractOptions,
) -> None:
    """Extract what is missing, sweep heads per pair, print one leaderboard."""
    if experiment:
        exp = read_experiment(experiment)
        if data or backbone:
            raise FeatpipeError(
                "--experiment names the datasets and backbones: drop --data/--backbone, "
                "or drop --experiment"
            )
        # What was typed here wins over the file's (which keeps the rest).
        exp.options = replace(exp.options, **given(sweeping))
        exp.extract = replace(exp.extract, **given(extraction))
    else:
        if not data or not backbone:
            raise FeatpipeError("compare needs --data and --backbone, or --experiment FILE")
        exp = Experiment(
            data=data,
            backbones=backbone,
            sweep=grid_from(sweep, grid),
            head=parse_fixed(set_),
            options=sweeping,
            extract=extraction,
            runs_dir=str(runs_dir),
        )
    with progress_bar("compare: starting") as bar:
        rows = run_compare(
            exp,
            progress=lambda model: (
                lambda p: bar.update(p.done, p.total, p.images_per_second, f"extract {model}")
            ),
            status=bar.status,
        )
    ranked = standings(rows)
    console().print(leaderboard(rows, ranked))
    print_verdicts(rows, ranked)
