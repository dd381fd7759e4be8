"""``featpipe retrieve``: recall@k and mAP@R of cached features, one row per backbone."""

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
        help="MODEL[@WEIGHTS] ('+' concatenates); repeat for a leaderboard of backbones.",
    ),
    runs_dir: Path = opt.RunsDir,
    *,
    searching: RetrievalOptions,
    extraction: ExtractOptions,
) -> None:
    """Retrieval without a head: test images query a gallery (train, or test leave-one-out);
    recall@k and mAP@R per backbone, each saved as a run."""
    from featpipe.fitting.retrieval import retrieve as run_retrieval  # torch: only when it runs

    found = []
    for backbone in backbones:
        with progress_bar(f"retrieve: features of {data} under {backbone}") as bar:
            found.append(
                run_retrieval(
                    data,
                    backbone,
                    searching,
                    extract_options=extraction,
                    runs_dir=runs_dir,
                    progress=lambda model: (
                        lambda p: bar.update(
                            p.done, p.total, p.images_per_second, f"extract {model}"
                        )
                    ),
                    status=bar.status,
                )
            )
    ks = searching.ks
    table = Table(title=f"retrieval leaderboard ({searching.label}, by mAP@R)")
    for column in ("backbone", *(f"recall@{k}" for k in ks), "mAP@R", "queries", "s"):
        table.add_column(column, justify="left" if column == "backbone" else "right")
    ranked = sorted(zip(backbones, found, strict=True), key=lambda b: -b[1][1].scores.map_at_r)
    for backbone, (_, result) in ranked:
        scores = result.scores
        table.add_row(
            backbone,
            *(f"{scores.recall[k]:.4f}" for k in ks),
            f"{scores.map_at_r:.4f}",
            str(scores.queries),
            f"{result.seconds:.2f}",
        )
    console().print(table)
    for backbone, (run, result) in zip(backbones, found, strict=True):
        if result.scores.without_positive:
            plain(
                f"{backbone}: {result.scores.without_positive} queries have no image of their "
                "class in the gallery and are left out"
            )
        plain(f"run: {run.path}")
