"""``featpipe retrieve``: recall@k and mAP@R of cached features, one row per backbone, with
intervals, the backbones compared on the same queries."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from featpipe.extraction.options import ExtractOptions
from featpipe.fitting.options import RetrievalOptions

from . import options as opt
from .render import console, plain, progress_bar


@opt.with_extract_options
@opt.with_options(RetrievalOptions, "searching", panel="Retrieval options")
def retrieve(
    data: Path = typer.Argument(..., help="ImageFolder tree, CSV manifest or image folder."),
    backbones: list[str] = typer.Option(
        ["tf_efficientnet_lite0"],
        "--backbone",
        "-b",
        help="MODEL[:LAYER][@WEIGHTS] ('+' concatenates); repeat for a leaderboard of "
        "backbones, compared on the same queries (layers of one model: one forward pass).",
    ),
    runs_dir: Path = opt.RunsDir,
    *,
    searching: RetrievalOptions,
    extraction: ExtractOptions,
) -> None:
    """Retrieval without a head: test images query a gallery (train, or test leave-one-out);
    recall@k and mAP@R per backbone with their 95% intervals over the queries, compared on the
    same queries; each saved as a run."""
    from featpipe.fitting.retrieval import (  # torch: only when it runs
        retrieve_each,
        verdict_lines,
    )

    with progress_bar(f"retrieve: features of {data}") as bar:
        board = retrieve_each(
            data,
            backbones,
            searching,
            extract_options=extraction,
            runs_dir=runs_dir,
            progress=lambda model: (
                lambda p: bar.update(p.done, p.total, p.images_per_second, f"extract {model}")
            ),
            status=bar.status,
        )
    ks = searching.ks
    scores = [*(f"recall@{k}" for k in ks), "map@r"]
    table = Table(title=f"retrieval leaderboard ({searching.label}, by mAP@R, 95% intervals)")
    for column in ("backbone", *(f"recall@{k}" for k in ks), "mAP@R", "queries", "s"):
        table.add_column(column, justify="left" if column == "backbone" else "right")
    ranked = sorted(board.runs.items(), key=lambda b: -b[1][1].scores.map_at_r)
    for backbone, (_, result) in ranked:
        table.add_row(
            backbone,
            *(result.intervals[score].format() for score in scores),
            str(result.scores.queries),
            f"{result.seconds:.2f}",
        )
    console().print(table)
    if board.rankings:
        n = next(iter(board.rankings.values())).best_score.n
        for line in verdict_lines(board.rankings):
            plain(f"on the same {n} test queries, {line}")
    for backbone, (run, result) in board.runs.items():
        if result.scores.without_positive:
            plain(
                f"{backbone}: {result.scores.without_positive} queries have no image of their "
                "class in the gallery and are left out"
            )
        plain(f"run: {run.path}")
