"""The options of a sweep, declared once: how heads are selected, tested, repeated and held;
and those of a retrieval run (:class:`RetrievalOptions`), declared the same way.

:class:`SweepOptions` is what ``featpipe.fit`` takes besides the heads (``grid``, ``head``) and
the features (``ExtractOptions``): seeds, cross-validation folds, the val hold-out, few-shot
shots and draws, repeated splits, the refit and the memory budget. ``featpipe fit`` and
``featpipe compare`` generate their flags from it (:func:`cli.options.with_options`), and a
compare experiment file's keys of the same names are read into it, so the three places that
once repeated these options share one declaration. Torch-free, so the command line checks
them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from featpipe.errors import ArgumentError
from featpipe.options import Interval, OneOf, check, option
from featpipe.protocols.retrieval import METRICS

GALLERIES = ("train", "test")


def parse_shots(text: str | None, param: str = "shots") -> tuple[int | str, ...] | None:
    """``"1,5,10,all"`` → ``(1, 5, 10, "all")``: positive shot counts per class, or ``all``."""
    if not text:
        return None
    shots: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            shots.append("all")
        elif part.isdigit() and int(part) > 0:
            shots.append(int(part))
        else:
            raise ArgumentError(param, f"{text}: use positive whole numbers or 'all', e.g. 1,5,all")
    return tuple(shots)


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep selects and tests its heads (see the module docstring)."""

    seeds: int = option(1, constraint=Interval(1), help="Seeds per config: mean ± std.")
    cv: int = option(
        5,
        constraint=Interval(2, what="2 or more folds"),
        help="Folds for selection when there is no val split.",
    )
    holdout: float = option(
        0.0,
        constraint=Interval(0, 1, "left", "a share in [0, 1)"),
        help="Without a val split: hold out this stratified share of train as val "
        "(0.15 matches finetune) instead of cross-validating.",
    )
    shots: tuple[int | str, ...] | None = option(
        None,
        help="Few-shot curve, examples per class: e.g. 1,5,10,50,all.",
        cli_type=str | None,
        parse=parse_shots,
    )
    draws: int = option(5, constraint=Interval(1), help="Repeated draws per few-shot point.")
    repeats: int = option(
        1,
        constraint=Interval(1),
        help="Re-draw the splits R times and repeat selection and test on each (features "
        "extracted once): mean, std and a 95% interval across splits. Data without fixed "
        "splits re-draws train/val/test; a fixed test split re-draws the val carve-out.",
    )
    refit: bool = option(
        True,
        help="After selection on val, fit the chosen config again on train + val, and test "
        "and save that head (the train-only head is kept for fine-tuning).",
    )
    memory_budget: str | int | None = option(
        None,
        flag="--memory-budget",
        help="Train features larger than this (e.g. 512M, 8G) are streamed from the cache in "
        "chunks (linear, mlp, ridge heads). Default: half the available memory.",
        cli_type=str | None,
    )
    n_jobs: int = option(
        -1, cli=False, help="scikit-learn heads fitted in parallel (joblib's n_jobs)."
    )

    def __post_init__(self) -> None:
        if self.shots is not None:
            # Lists arrive from Python callers, experiment files and JSON: one hashable shape,
            # each count checked as the command line checks it.
            shots = self.shots
            text = shots if isinstance(shots, str) else ",".join(str(s) for s in shots)
            object.__setattr__(self, "shots", parse_shots(text) if text else None)
        check(self)


def parse_ks(text: str | None, param: str = "ks") -> tuple[int, ...]:
    """``"1,5,10"`` → ``(1, 5, 10)``: distinct positive ranks."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if (
        not parts
        or not all(p.isdigit() and int(p) > 0 for p in parts)
        or len(set(parts)) < len(parts)
    ):
        raise ArgumentError(param, f"{text}: give distinct positive ranks, e.g. 1,5,10")
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class RetrievalOptions:
    """How a retrieval run's test queries search their gallery
    (:func:`featpipe.fitting.retrieval.retrieve`)."""

    gallery: str = option(
        "train",
        constraint=OneOf(GALLERIES),
        help="train: test queries against the train split | test: leave-one-out within test.",
    )
    metric: str = option("cosine", constraint=OneOf(METRICS), help="cosine | l2 (Euclidean).")
    ks: tuple[int, ...] = option(
        (1, 5, 10),
        flag="--ks",
        help="The k of recall@k, e.g. 1,5,10.",
        cli_type=str,
        cli_default="1,5,10",
        parse=parse_ks,
    )

    def __post_init__(self) -> None:
        if not isinstance(self.ks, tuple):  # a list or text from Python or a file
            text = self.ks if isinstance(self.ks, str) else ",".join(map(str, self.ks))
            object.__setattr__(self, "ks", parse_ks(text))
        check(self)

    @property
    def label(self) -> str:
        """How a leaderboard names the protocol: ``retrieval(cosine, gallery=train)``."""
        return f"retrieval({self.metric}, gallery={self.gallery})"
