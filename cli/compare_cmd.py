"""``featpipe compare``: backbones × datasets, one leaderboard."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich import box
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


# Below this width a score's interval goes under it (two lines a row, not a truncated cell);
# at and above WIDE the table adds macro-F1 and the time.
ONE_LINE, WIDE = 110, 150


def leaderboards(
    rows: list[Row], standings: list[Standing] | None = None, width: int = 80
) -> list[Table]:
    """One table per dataset, its rows compared on the same test images, that fits ``width``.

    Names fold rather than shrink to an ellipsis, and a score never loses its interval: below
    :data:`ONE_LINE` columns the interval goes on a second line, and the optional columns
    (macro-F1, time) appear from :data:`WIDE` up. The dataset and its test n are in the title.
    """
    against = _against(standings or [])
    stacked, wide = width < ONE_LINE, width >= WIDE
    tables = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        group = sorted((r for r in rows if r.dataset == dataset), key=lambda r: -r.val)
        names = dict(zip(map(id, group), row_names(group), strict=True))
        metric = group[0].metric
        sizes = {r.test_interval.n for r in group if r.test_interval}
        n = f", on {sizes.pop()} test images" if len(sizes) == 1 else ""
        table = Table(
            title=f"{dataset}: backbones by val {metric} (95% intervals{n})",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        columns = ["backbone", "best head", f"val\n{metric}", f"test\n{metric}"]
        columns += ["vs\nbest", "vs random\n(points)"]
        columns += ["test\nmacro-F1", "time s"] if wide else []
        columns += ["n"] if not n else []
        for column in columns:
            name = column in ("backbone", "best head")  # names fold; scores keep their lines
            table.add_column(
                column, justify="left" if name else "right", overflow="fold", no_wrap=not name
            )

        def stack(text: str, at: str) -> str:
            """``text`` with what follows ``at`` on a second line, in the narrow layout."""
            return text.replace(at, "\n" + at[1:], 1) if stacked else text

        def score(value: float, interval: Interval | None) -> str:
            return stack(_score(value, interval), " [")

        for row in group:
            cells = [
                row.backbone,
                row.chosen,
                score(row.val, row.val_interval),
                score(row.test, row.test_interval),
                stack(against.get((dataset, names[id(row)]), ""), " ("),
                stack(_gap(row), " ["),
            ]
            if wide:
                cells += [
                    score(row.macro_f1, row.macro_f1_interval),
                    f"{_num(row.extract_seconds, 1)}+{_num(row.fit_seconds, 1)}",  # extract + fit
                ]
            if not n:
                cells.append(str(row.test_interval.n) if row.test_interval else "")
            table.add_row(*cells)
        tables.append(table)
    return tables


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
            tests = ", ".join(sorted({c.test for c in standing.splits.comparisons}))
            plain(f"{standing.dataset}, paired over {splits} splits ({tests}): {standing.splits}")
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
    out = console()
    for table in leaderboards(rows, ranked, out.width):
        out.print(table)
    print_verdicts(rows, ranked)
