"""``featpipe report``: one HTML page with PNG plots over every run in a directory.

This module lays the page out (leaderboards with their intervals, notes, tables, each run's
figures in order); :mod:`featpipe.reports.plots` draws the figures. Fine-tune runs add the
options they ran with (augmentation, EMA, image size, test-time augmentation: each that is not
at its default), with the weights they kept.

Every row links to its run folder; a chosen head is named by the options that differ from the
defaults, the full config on hover. Links and images are relative, so the folder can be moved
together with the runs directory beside it.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from featpipe.errors import MissingError
from featpipe.finetuning.config import FinetuneConfig
from featpipe.fitting.verdict import compared_line
from featpipe.options import declared
from featpipe.reports import plots
from featpipe.runs.metrics import Calibrated
from featpipe.runs.record import RETRIEVAL, Run, list_runs

# Test scores the tables show next to the selection metric, where a run has them.
SCORES = {
    "classification": ("accuracy", "balanced_accuracy", "macro_f1", "auroc"),
    "regression": ("r2", "mae", "mse"),
}
STYLE = (
    "body{font-family:sans-serif;max-width:1150px;margin:auto;padding:0 12px}"
    "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 6px;"
    "font-size:13px}th{background:#f3f3f3}td.num{text-align:right}"
    "img{max-width:100%;margin:4px 0}abbr{text-decoration:underline dotted}"
    ".note{color:#555;font-size:13px}"
)


def _val(run: Run) -> float:
    value = run.metrics.val.mean
    return value if value == value else -math.inf


def _pairs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs per (dataset, backbone), oldest first."""
    pairs: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.config["created"]):
        pairs[(run.config["dataset"], run.config["backbone"])].append(run)
    return dict(sorted(pairs.items()))


def _featured(runs: list[Run]) -> list[tuple[str, Run]]:
    """What a pair's section shows: its best run (by validation score, cached-feature heads
    and fine-tunes alike), the latest run with a learning-rate sweep, the latest fine-tune."""
    best = max(runs, key=_val)
    chosen = [("best run", best)]
    swept = [r for r in runs if plots.has_sweep(r)]
    if swept and swept[-1] is not best:
        chosen.append(("latest sweep", swept[-1]))
    tuned = [r for r in runs if r.config.get("kind") == "finetune"]
    if tuned and tuned[-1] is not best:
        chosen.append(("latest fine-tune", tuned[-1]))
    return chosen


def calibration_rows(run: Run) -> list[list[str]]:
    """ECE, NLL and Brier score on test, before and after temperature scaling."""
    record = run.metrics.calibration
    if record is None:
        return []
    rows = [["as predicted", "", *_calibrated(record.before)]]
    if record.after is not None:
        rows.append(["temperature-scaled", _num(record.temperature), *_calibrated(record.after)])
    return rows


def _calibrated(scores: Calibrated) -> list[str]:
    return [_num(scores.ece), _num(scores.nll), _num(scores.brier)]


def per_class_rows(run: Run) -> list[list[str]]:
    """Per-class test precision, recall, F1 and support, read off the confusion matrix."""
    matrix = np.array(run.metrics.confusion or [], dtype=np.float64)
    if matrix.size == 0:
        return []
    support, predicted, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
    rows = []
    for c, name in enumerate(run.metrics.class_names):
        precision = hits[c] / predicted[c] if predicted[c] else 0.0
        recall = hits[c] / support[c] if support[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append([name, f"{precision:.3f}", f"{recall:.3f}", f"{f1:.3f}", f"{support[c]:.0f}"])
    return rows


def _table(rows: list[list[str]], header: list[str]) -> str:
    """An HTML table; cells are text, or already-built HTML when wrapped in :class:`_Html`."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Html(str):
    """A table cell that is markup already (a link, a hover title)."""


def _td(cell: Any) -> str:
    if isinstance(cell, _Html):
        return f"<td>{cell}</td>"
    text = str(cell)
    numeric = text.replace(".", "", 1).replace("-", "", 1).isdigit()
    return (
        f"<td class='num'>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"
    )


def _run_link(run: Run, out: Path) -> _Html:
    href = Path(os.path.relpath(run.path.resolve(), out.resolve())).as_posix() + "/"
    return _Html(f"<a href='{html.escape(href)}'>{html.escape(run.path.name)}</a>")


def _head_cell(run: Run) -> _Html:
    short, full = plots.head_label(run)
    return _Html(f"<abbr title='{html.escape(full)}'>{html.escape(short)}</abbr>")


def _num(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"


def _scored(run: Run, split: str, metric: str, value: float | None) -> str:
    """``0.682 [0.53, 0.81]`` where the run recorded the interval, else the bare number."""
    interval = run.metrics.intervals.get(split, {}).get(metric)
    return interval.format() if interval is not None else _num(value)


def _test_n(run: Run) -> str:
    """The test images a run's scores rest on ('' where not recorded)."""
    n = run.metrics.split_sizes.get("test")
    return str(n) if n else ""


def _trust_notes(runs: list[Run]) -> list[str]:
    """Each run's verdict on its configs, repeated splits and warnings, one paragraph each."""
    notes = []
    for run in runs:
        m, lines = run.metrics, []
        if m.verdict:
            lines.append(compared_line(m.selection, len(m.val.all), m.verdict))
        if m.repeats is not None:
            lines += [
                f"test {k} over {len(m.repeats.chosen)} re-drawn splits "
                f"({m.repeats.redrawn}): {v.format()}, std {m.repeats.std[k]:.3g}"
                for k, v in m.repeats.summary.items()
            ]
        lines += [f"warning: {w}" for w in m.warnings]
        if lines:
            name = f"{run.config.get('dataset')} · {run.config.get('backbone')}"
            body = "<br>".join(html.escape(line) for line in lines)
            notes.append(f"<p class='note'><b>{html.escape(name)}</b>: {body}</p>")
    return notes


def report(runs_dir: Path, out: Path) -> Path:
    """Write ``out/index.html`` and its PNGs; returns the HTML path."""
    runs = list_runs(runs_dir)
    if not runs:
        raise MissingError(f"no runs in {runs_dir}: fit something first")
    out.mkdir(parents=True, exist_ok=True)
    searched = [r for r in runs if r.config.get("kind") == RETRIEVAL]
    pairs = _pairs([r for r in runs if r.config.get("kind") != RETRIEVAL])
    best = {pair: max(group, key=_val) for pair, group in pairs.items()}
    parts: list[str] = [
        f"<html><head><meta charset='utf-8'><title>featpipe report</title><style>{STYLE}"
        f"</style></head><body><h1>featpipe report</h1><p>{len(runs)} runs from "
        f"{html.escape(str(runs_dir))}. A head is named by its options that differ from the "
        "defaults; hover for all of them. Run names link to their folders.</p>"
    ]
    for task in ("classification", "regression"):
        rows = [
            [
                d,
                b,
                r.config.get("kind", "fit"),
                _head_cell(r),
                r.metrics.selection,
                _scored(r, "val", r.metrics.metric, r.metrics.val.mean),
                *(_scored(r, "test", s, r.metrics.test.averaged().get(s)) for s in SCORES[task]),
                _test_n(r),
                f"{len(pairs[(d, b)])}",
                _run_link(r, out),
            ]
            for (d, b), r in best.items()
            if r.metrics.task == task
        ]
        if rows:
            title = f"Leaderboard, {task} (best run per dataset × backbone, by validation score)"
            parts.append(f"<h2>{title}</h2>")
            metric = "r2" if task == "regression" else "accuracy"
            header = ["dataset", "backbone", "kind", "chosen head", "selection", f"val {metric}"]
            tests = [f"test {s.replace('_', ' ')}" for s in SCORES[task]]
            parts.append(_table(rows, [*header, *tests, "test n", "runs", "run"]))
            parts.append(
                "<p class='note'>Scores with their 95% interval: Wilson for accuracy, a seeded "
                "BCa bootstrap over the test images (2,000 resamples) for the others; n: the "
                "test images they rest on. Runs written before intervals were recorded show "
                "bare numbers.</p>"
            )
            parts += _trust_notes([r for r in best.values() if r.metrics.task == task])
    if searched:
        parts.append("<h2>Retrieval (test images as queries, no head)</h2>")
        parts.append(retrieval_table(searched, out))
    figures = plots.heatmaps(best, out)
    if figures:
        parts.append("<h2>Backbone × dataset</h2>")
        parts += [f"<img src='{f}' alt='heatmap'>" for f in figures]
    figure = plots.few_shot_plot([r for group in pairs.values() for r in group], out)
    if figure:
        parts.append(
            f"<h2>Few-shot curves</h2><img src='{figure}' alt='few-shot curves'><p class='note'>"
            "Each point: the mean accuracy over the draws of that many training images per "
            "class; its bar, the 95% interval over the draws (t) and the test images (bootstrap), "
            "added in quadrature (a point of one draw: the test images alone). Runs recorded "
            "before intervals show ± the draws' standard deviation, and say so.</p>"
        )
    index = 0
    for (dataset, backbone), group in pairs.items():
        section = [f"<h2>{html.escape(dataset)} · {html.escape(backbone)}</h2>"]
        for role, run in _featured(group):
            index += 1
            shown = _run_plots(run, out, index)
            if shown:
                section.append(
                    f"<h3>{html.escape(role)}: {_head_cell(run)} ({_run_link(run, out)})</h3>"
                )
                section += shown
        parts += section if len(section) > 1 else []
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    return page


def retrieval_table(runs: list[Run], out: Path) -> str:
    """Retrieval runs, one row each (newest first per dataset and backbone): the protocol's
    settings, recall@k and mAP@R with their 95% intervals, the queries they rest on; then the
    comparisons on the same queries each run recorded."""
    scores = sorted({k for r in runs for k in r.metrics.test.averaged()}, key=_rank_order)
    ordered = sorted(runs, key=lambda r: (r.config["dataset"], r.config["backbone"]))
    rows = [
        [
            r.config["dataset"],
            r.config["backbone"],
            r.metrics.chosen.get("metric", ""),
            r.metrics.chosen.get("gallery", ""),
            *(_scored(r, "test", k, r.metrics.test.averaged().get(k)) for k in scores),
            _queries(r),
            f"{r.metrics.fit_seconds:.2f}",
            _run_link(r, out),
        ]
        for r in ordered
    ]
    header = ["dataset", "backbone", "similarity", "gallery", *scores, "queries", "s", "run"]
    notes = [
        "<p class='note'>Scores with their 95% interval: a seeded BCa bootstrap over the queries "
        "(2,000 resamples; the gallery held fixed). Runs written before intervals were recorded "
        "show bare numbers.</p>"
    ]
    compared = {(r.config["dataset"], r.metrics.verdict): r for r in ordered if r.metrics.verdict}
    for dataset, verdict in compared:
        lines = "<br>".join(html.escape(line) for line in verdict.splitlines())
        notes.append(
            f"<p class='note'><b>{html.escape(dataset)}</b>, on the same queries: {lines}</p>"
        )
    return _table(rows, header) + "".join(notes)


def _queries(run: Run) -> str:
    """The queries a retrieval run's scores rest on ('' where not recorded)."""
    scored = run.metrics.intervals.get("test", {})
    return str(next(iter(scored.values())).n) if scored else ""


def _rank_order(score: str) -> tuple[int, int]:
    """recall@1, recall@5, … by k, then mAP@R."""
    name, _, k = score.partition("@")
    return (0, int(k)) if name == "recall" and k.isdigit() else (1, 0)


def finetune_note(run: Run) -> str | None:
    """What a fine-tune run ran with (its options not at their defaults, as run.json records
    them), which weights it kept, its scores with their intervals and what it gained over the
    head it started from, on the same test images; None for other runs."""
    if run.config.get("kind") != "finetune":
        return None
    request = run.config.get("request", {})
    options = [
        f"{o.name}={request[o.name]}"
        for o in declared(FinetuneConfig)
        if o.name in request and request[o.name] not in (o.default, None)
    ]
    metrics = run.metrics
    epoch = metrics.best_epoch
    kept = f"epoch {epoch + 1}" if epoch >= 0 else "the starting head (no epoch beat it)"
    if metrics.kept_weights == "ema":
        kept += ", its EMA weights"
    tta = metrics.tta
    if metrics.tta_note:  # asked for, and left out: it did worse on val
        scored = f"; {metrics.tta_note}"
    elif tta != "none":
        scored = f"; val and test scored with test-time augmentation ({tta})"
    else:
        scored = ""
    note = f"Fine-tune options: {', '.join(options) or 'the defaults'}. Kept: {kept}{scored}."
    scores = [
        f"{split} {metrics.metric} {interval}"
        for split in ("val", "test")
        if (interval := metrics.intervals.get(split, {}).get(metrics.metric)) is not None
    ]
    if scores:
        note += f" Scores (95% intervals): {', '.join(scores)}."
    gain = str(metrics.gain) if metrics.gain is not None else metrics.gain_note
    if gain:
        note += f" {gain[0].upper()}{gain[1:]}."
    return note


def _run_plots(run: Run, out: Path, i: int) -> list[str]:
    """The HTML of one run's plots: the fine-tune options, sweep, confusion with per-class
    scores, regression, CAM, curves with diagnosis."""
    html_parts = []
    note = finetune_note(run)
    if note:
        html_parts.append(f"<p class='note'>{html.escape(note)}</p>")
    sweep = plots.sweep_plot(run, out, i)
    if sweep:
        html_parts.append(f"<img src='{sweep}' alt='learning-rate sweep'>")
    confusion = plots.confusion_plot(run, out, i)
    if confusion:
        html_parts.append(f"<img src='{confusion}' alt='confusion matrix'>")
        header = ["class", "precision", "recall", "F1", "test images"]
        html_parts.append(_table(per_class_rows(run), header))
    reliability = plots.calibration_plot(run, out, i)
    if reliability:
        record = run.metrics.calibration
        assert record is not None  # the plot is drawn from it
        html_parts.append(f"<img src='{reliability}' alt='reliability diagram'>")
        header = ["test probabilities", "temperature (fitted on val)", "ECE", "NLL", "Brier"]
        html_parts.append(_table(calibration_rows(run), header))
        head = "selection's train-only head (val is held out from it)"
        scored = head if record.head == "selection" else "the chosen head"
        note = f" {record.note}." if record.note else ""
        html_parts.append(f"<p class='note'>Calibration of {scored}.{html.escape(note)}</p>")
    regression = plots.regression_plot(run, out, i)
    if regression:
        html_parts.append(f"<img src='{regression}' alt='predicted against true'>")
    elif run.metrics.task == "regression":
        html_parts.append(
            "<p class='note'>No test predictions recorded in this run (written by an older "
            "featpipe): fit again for the predicted-vs-true plot.</p>"
        )
    if run.metrics.cam:
        shutil.copy(run.path / run.metrics.cam, out / f"cam-{i}.png")
        html_parts.append(
            f"<p>Class activation maps (validation images)</p><img src='cam-{i}.png' alt='CAM'>"
        )
    curves = plots.curves_plot(run, out, i)
    if curves:
        html_parts.append(
            f"<img src='{curves[0]}' alt='training curves'>"
            f"<p><b>Diagnosis</b> — {html.escape(curves[1])}</p>"
        )
    return html_parts
