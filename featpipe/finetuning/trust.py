"""How far a fine-tune's numbers can be trusted: its val and test scores with their n and 95%
intervals, the warnings a fit prints, and what fine-tuning gained over the head it started
from, paired on the same test images.

A fine-tune is scored once, on a test split as small as a fit's (44 images on ELPV-300: about
±0.14 around 0.68), so its scores need their intervals as much; and "did fine-tuning help?" is a
paired question: the start head and the fine-tuned network see the same test images, so the
images hard for both cancel out of the difference. The numbers come from the fit's own code
(:func:`featpipe.fitting.verdict.assess`: Wilson for accuracy, the seeded BCa bootstrap for every
other metric, the validation–test gap and chance warnings) and :mod:`featpipe.stats`
(:func:`~featpipe.stats.paired_difference`: McNemar's exact p for accuracy, the paired bootstrap's
interval). The start head's test outputs are read from its fit run's ``predictions.npz``
(selection's train-only head, the one LP-FT starts from; after ``--refit``, which starts from the
run's own head, that head's), matched to the fine-tune's test images by path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from featpipe.data.datasets import Item
from featpipe.errors import ArgumentError, DataError
from featpipe.finetuning.trainer import Evaluation
from featpipe.fitting.verdict import assess
from featpipe.runs.metrics import Gain
from featpipe.runs.predictions import SELECTION_TEST, RunPredictions, SplitOutputs
from featpipe.runs.record import load_run
from featpipe.stats import Interval, paired_difference


@dataclass(frozen=True)
class Trust:
    """A fine-tune's per-image predictions (val, test), every score with its interval per
    split, the warnings, and the gain over the start head (or why there is none: ``gain_note``,
    empty for a fresh head, which has nothing to compare with)."""

    predictions: RunPredictions
    intervals: dict[str, dict[str, Interval]]
    warnings: list[str]
    gain: Gain | None = None
    gain_note: str = ""


def split_outputs(items: list[Item], evaluation: Evaluation, task: str) -> SplitOutputs:
    """An evaluation as predictions.npz records a split: each output row's image path and true
    label (or value), in the order the rows were scored."""
    scored = [items[i] for i in evaluation.index]
    y = np.array([i.label if task == "classification" else i.target for i in scored])
    return SplitOutputs(np.array([i.relpath for i in scored]), y, evaluation.outputs)


def against_start(
    start: Path,
    tested: SplitOutputs,
    task: str,
    n_classes: int,
    metric: str,
    refitted: bool = False,
) -> tuple[Gain | None, str]:
    """Fine-tune − start head on the same test images, or None and the reason it cannot be
    compared (the start run recorded no test outputs of that head, or other test images). The
    start head of a refit (``refitted``) is the start run's own head, else selection's."""
    why = f"not compared with the head it started from ({start}): "
    try:
        recorded = load_run(start).test_outputs(selection=not refitted)
    except DataError as exc:
        return None, why + str(exc)
    if recorded is None:
        return None, why + (
            "its run recorded no test predictions of that head (written by an older featpipe; "
            "fit it again to compare)"
        )
    aligned = recorded.aligned(tested.relpath)
    if aligned is None or not np.allclose(aligned.y, tested.y):
        return None, why + "its run was tested on other images (or other labels) than these"
    # the same truth for both: the fine-tune's labels, which the start run's match
    head = replace(tested, outputs=aligned.outputs).predictions(task, n_classes)
    try:
        d = paired_difference(tested.predictions(task, n_classes), head, metric)
    except ArgumentError as exc:  # a metric undefined on these images (one class)
        return None, why + str(exc)
    return Gain(str(start), metric, d.interval, d.p, d.test), ""


def assess_finetune(
    items: dict[str, list[Item]],
    evaluations: dict[str, Evaluation],
    task: str,
    n_classes: int,
    metric: str,
    start: Path | None,
) -> Trust:
    """The :class:`Trust` of a fine-tune: ``evaluations`` maps ``val`` (and ``test`` where
    the data has one) to the kept weights' evaluation of ``items`` of that split, and after a
    refit :data:`~featpipe.runs.predictions.SELECTION_TEST` to the weights val chose on test;
    ``start`` is the run whose head it started from (None: a fresh head)."""
    splits = {s: split_outputs(items[s], e, task) for s, e in evaluations.items()}
    predictions = RunPredictions(task, n_classes, splits)
    scored = {s: p for s in ("val", "test") if (p := predictions.on(s)) is not None}
    verdict = assess(scored, {}, metric)
    gain, note = None, ""
    if start is not None and "test" in splits:
        refitted = SELECTION_TEST in splits
        gain, note = against_start(start, splits["test"], task, n_classes, metric, refitted)
    return Trust(predictions, verdict.intervals, verdict.warnings, gain, note)
