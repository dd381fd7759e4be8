"""``featpipe report``: one HTML page with PNG plots over every run in a directory.

Plots, where a picture says more than numbers: validation score against learning rate (one
panel per head type, every weight decay visible, seed spread as error bars), a backbone ×
dataset heatmap, few-shot curves, the confusion matrix and per-class scores of the best head,
its reliability diagram (calibration on test, before and after temperature scaling),
predicted-vs-true and residuals for regression, and train/validation curves of torch heads with
the fit diagnosis written beside them. Fine-tune runs add their per-epoch curves and the options
they ran with (augmentation, EMA, image size, test-time augmentation: each that is not at its
default), with the weights they kept.

Every row links to its run folder; a chosen head is named by the options that differ from the
defaults, the full config on hover. Links and images are relative, so the folder can be moved
together with the runs directory beside it.
"""

from __future__ import annotations

import csv
import functools
import html
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from featpipe.errors import MissingError
from featpipe.finetuning.config import FinetuneConfig
from featpipe.heads.config import HeadConfig
from featpipe.options import declared
from featpipe.reports.diagnosis import diagnose_history
from featpipe.runs.metrics import Calibrated
from featpipe.runs.record import RETRIEVAL, Run, list_runs

# Test scores the tables show next to the selection metric, where a run has them.
SCORES = {
    "classification": ("accuracy", "balanced_accuracy", "macro_f1", "auroc"),
    "regression": ("r2", "mae", "mse"),
}
MARKERS = "osD^v<>p*h"
STYLE = (
    "body{font-family:sans-serif;max-width:1150px;margin:auto;padding:0 12px}"
    "table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 6px;"
    "font-size:13px}th{background:#f3f3f3}td.num{text-align:right}"
    "img{max-width:100%;margin:4px 0}abbr{text-decoration:underline dotted}"
    ".note{color:#555;font-size:13px}"
)


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


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
    swept = [r for r in runs if _has_sweep(r)]
    if swept and swept[-1] is not best:
        chosen.append(("latest sweep", swept[-1]))
    tuned = [r for r in runs if r.config.get("kind") == "finetune"]
    if tuned and tuned[-1] is not best:
        chosen.append(("latest fine-tune", tuned[-1]))
    return chosen


@functools.cache
def _sweep_rows(path: Path) -> list[dict[str, str]]:
    """Torch-head rows of a run (read once: a written run never changes)."""
    with (path / "rows.csv").open(newline="") as handle:
        return [r for r in csv.DictReader(handle) if r.get("lr") and r["head"] in ("linear", "mlp")]


def _has_sweep(run: Run) -> bool:
    return len({r["lr"] for r in _sweep_rows(run.path)}) > 1


def _head_label(run: Run) -> tuple[str, str]:
    """The chosen head by the options that differ from their defaults, and in full."""
    chosen = run.metrics.chosen
    full = ", ".join(f"{k}={v}" for k, v in chosen.items())
    try:
        short = HeadConfig.from_dict(chosen, ignore_unknown=True).label()
    except ValueError:  # a config of another featpipe version: show what it recorded
        short = run.metrics.chosen_label or full
    return short, full


def _val_size(run: Run) -> int | None:
    """How many images the validation score rests on; None when the run does not say (split
    sizes are recorded by fit; older runs: none)."""
    sizes = run.metrics.split_sizes
    if run.metrics.selection == "val":
        return sizes.get("val")
    return sizes.get("train")  # cross-validation: every training image is validated once


def sweep_plot(run: Run, out: Path, index: int) -> str | None:
    """Validation score against lr: one panel per torch head type, one line per weight decay.

    Lines of equal scores would hide each other, so each weight decay has its own marker and a
    small horizontal offset; error bars are the spread (std) over seeds.
    """
    rows = _sweep_rows(run.path)
    metric = f"val_{run.metrics.metric}"
    lines: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in rows:
        lines[r["head"]][r["wd"]][float(r["lr"])].append(float(r[metric]))
    if not any(len(points) >= 2 for by_wd in lines.values() for points in by_wd.values()):
        return None
    heads = sorted(lines)
    fig, axes = plt.subplots(
        1, len(heads), figsize=(4.6 * len(heads), 3.8), sharey=True, squeeze=False
    )
    seeds = max(len(v) for by_wd in lines.values() for p in by_wd.values() for v in p.values())
    for ax, head in zip(axes[0], heads, strict=True):
        by_wd = lines[head]
        count = len(by_wd)
        for i, (wd, points) in enumerate(sorted(by_wd.items(), key=lambda kv: float(kv[0]))):
            lrs = sorted(points)
            shift = 10 ** (0.035 * (i - (count - 1) / 2))  # a few % apart on the log axis
            ax.errorbar(
                [lr * shift for lr in lrs],
                [np.mean(points[lr]) for lr in lrs],
                yerr=[np.std(points[lr]) for lr in lrs],
                marker=MARKERS[i % len(MARKERS)],
                markersize=5,
                capsize=3,
                linewidth=1.2,
                alpha=0.85,
                label=f"wd={wd}",
            )
        ax.set_xscale("log")
        ax.set(xlabel="learning rate", title=f"{head} head")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="weight decay", title_fontsize=8)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    fig.suptitle(
        f"{run.config['dataset']} · {run.config['backbone']}: lr sweep ({spread})", fontsize=10
    )
    return _save(fig, out, f"sweep-{index}.png")


def heatmaps(best: dict[tuple[str, str], Run], out: Path) -> list[str]:
    """Backbone × dataset, one heatmap per metric (accuracy and R² do not share a scale)."""
    by_metric: dict[str, dict[tuple[str, str], Run]] = defaultdict(dict)
    for pair, run in best.items():
        by_metric[run.metrics.metric][pair] = run
    figures = []
    for metric, runs in sorted(by_metric.items()):
        datasets = sorted({d for d, _ in runs})
        backbones = sorted({b for _, b in runs})
        if len(datasets) * len(backbones) < 2:
            continue
        grid = np.full((len(backbones), len(datasets)), np.nan)
        for (d, b), run in runs.items():
            value = run.metrics.test.mean
            grid[backbones.index(b), datasets.index(d)] = (
                value if value == value else run.metrics.val.mean
            )
        fig, ax = plt.subplots(figsize=(2.5 + 1.6 * len(datasets), 1.5 + 0.5 * len(backbones)))
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right")
        ax.set_yticks(range(len(backbones)), backbones)
        middle = np.nanmean(grid)
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                color = "black" if v > middle else "white"
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color=color, fontsize=9)
        fig.colorbar(image, ax=ax, label=f"test {metric} (best run)")
        ax.set_title(f"backbone × dataset: {metric}")
        figures.append(_save(fig, out, f"heatmap-{metric}.png"))
    return figures


def few_shot_plot(runs: list[Run], out: Path) -> str | None:
    """Accuracy against real training examples per class, one line per run, in x order.

    The ``all`` point sits at the largest class's size (all of train) and is labelled so.
    """
    with_curves = [r for r in runs if r.metrics.few_shot]
    if not with_curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    splits = set()
    for i, run in enumerate(with_curves):
        pts = sorted(run.metrics.few_shot, key=lambda p: p.per_class)
        x = [p.per_class for p in pts]
        y = np.array([p.mean for p in pts])
        err = np.array([p.std for p in pts])
        splits |= {p.split for p in pts}
        head = _head_label(run)[0]
        line = ax.errorbar(
            x,
            y,
            yerr=err,
            marker=MARKERS[i % len(MARKERS)],
            capsize=3,
            label=f"{run.config['dataset']} · {run.config['backbone']} · {head}",
        )
        for p in pts:
            if p.shots == "all":
                ax.annotate(
                    f"all ({p.per_class})",
                    (p.per_class, p.mean),
                    textcoords="offset points",
                    xytext=(4, -12),
                    fontsize=7,
                    color=line[0].get_color(),
                )
    ax.set_xscale("log")
    ax.set(
        xlabel="training examples per class (all = the whole train split)",
        ylabel=f"{'/'.join(sorted(splits))} accuracy",
        title=f"few-shot: accuracy on the {' and '.join(sorted(splits))} split "
        "(mean ± std over draws)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out, "few-shot.png")


def confusion_plot(run: Run, out: Path, index: int) -> str | None:
    if not run.metrics.confusion:
        return None
    matrix = np.array(run.metrics.confusion)
    names = run.metrics.class_names
    size = 2.5 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if v > matrix.max() / 2 else "black",
        )
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"test confusion: {run.config['dataset']} · {run.config['backbone']}",
    )
    return _save(fig, out, f"confusion-{index}.png")


def calibration_plot(run: Run, out: Path, index: int) -> str | None:
    """The reliability diagram of a classification fit: accuracy against mean confidence per
    confidence bin on test, before and after temperature scaling (the diagonal is calibrated)."""
    record = run.metrics.calibration
    if record is None:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="calibrated")
    shown = [("as predicted", record.before, "o-")]
    if record.after is not None:
        shown.append((f"temperature {record.temperature:.3g}", record.after, "s-"))
    for name, scores, style in shown:
        points = [
            (c, a)
            for c, a in zip(scores.confidence, scores.accuracy, strict=True)
            if c is not None and a is not None
        ]
        xs, ys = zip(*points, strict=True) if points else ((), ())
        ax.plot(xs, ys, style, ms=4, label=f"{name}: ECE {scores.ece:.3f}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean confidence (15 bins)",
        ylabel="accuracy",
        title=f"reliability on test: {run.config['dataset']} · {run.config['backbone']}",
    )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out, f"reliability-{index}.png")


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


def regression_plot(run: Run, out: Path, index: int) -> str | None:
    """Predicted against true on test, and the residuals against the prediction."""
    recorded = run.metrics.test_predictions
    if run.metrics.task != "regression" or not recorded:
        return None
    y = np.asarray(recorded.true, np.float64)
    pred = np.asarray(recorded.predicted, np.float64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.scatter(y, pred, s=12, alpha=0.6)
    low, high = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    left.plot([low, high], [low, high], color="grey", linestyle="--", label="predicted = true")
    left.set(xlabel="true", ylabel="predicted", title=f"test: {len(y)} images")
    left.legend(fontsize=8)
    right.scatter(pred, pred - y, s=12, alpha=0.6)
    right.axhline(0, color="grey", linestyle="--")
    right.set(xlabel="predicted", ylabel="residual (predicted − true)", title="residuals")
    fig.suptitle(f"{run.config['dataset']} · {run.config['backbone']}", fontsize=10)
    return _save(fig, out, f"regression-{index}.png")


def curves_plot(run: Run, out: Path, index: int) -> tuple[str, str] | None:
    """Train/validation curves of the chosen torch head, with the diagnosis."""
    chosen = run.metrics.chosen
    curves = [c for c in run.curves() if c["config"] == chosen]
    if not curves or not curves[0]["history"].get("val_metric"):
        return None
    history = curves[0]["history"]
    finetune = run.config.get("kind") == "finetune"
    # The epoch selection scored: the fine-tune's best epoch, or the selection head's (its last
    # epoch, or its best with early stopping); a refitted head trained on train + val after it.
    best_epoch = run.metrics.best_epoch if finetune else run.selection_head().best_epoch
    refitted = not finetune and run.metrics.trained_on == "train+val"
    n_classes = len(run.metrics.class_names) if run.metrics.task != "regression" else 0
    diag = diagnose_history(history, n_classes, n_val=_val_size(run))
    epochs = range(1, len(history["train_loss"]) + 1)
    if finetune:
        fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
        (left, right), (lrs, grads) = axes
        for name in history["lr"][-1]:
            lrs.plot(epochs, [e.get(name, np.nan) for e in history["lr"]], label=name)
        lrs.set(xlabel="epoch", ylabel="learning rate (end of epoch)", yscale="log")
        for name in history["grad_norm"][-1]:
            grads.plot(epochs, [e.get(name, np.nan) for e in history["grad_norm"]], label=name)
        grads.set(xlabel="epoch", ylabel="gradient norm per block", yscale="log")
        for ax in (lrs, grads):
            handles = ax.get_legend_handles_labels()[0]
            if len(handles) <= 8:
                ax.legend(fontsize=6)
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((left, "loss", "loss"), (right, "metric", run.metrics.metric)):
        ax.plot(epochs, history[f"train_{key}"], label="train")
        ax.plot(epochs, history[f"val_{key}"], label="validation")
        ax.axvline(best_epoch + 1, color="grey", linestyle=":", label="selected epoch")
        ax.set(xlabel="epoch", ylabel=label)
        ax.legend(fontsize=8)
    refit = " · then refitted on train + val (the saved head)" if refitted else ""
    fig.suptitle(
        f"{run.config['dataset']} · {run.config['backbone']} · {_head_label(run)[0]}{refit}",
        fontsize=9,
    )
    return _save(fig, out, f"curves-{index}.png"), diag.text() if diag else ""


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
    short, full = _head_label(run)
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
            lines.append(f"configs on the same {m.selection} images: {m.verdict}")
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
    figures = heatmaps(best, out)
    if figures:
        parts.append("<h2>Backbone × dataset</h2>")
        parts += [f"<img src='{f}' alt='heatmap'>" for f in figures]
    figure = few_shot_plot([r for group in pairs.values() for r in group], out)
    if figure:
        parts.append(f"<h2>Few-shot curves</h2><img src='{figure}' alt='few-shot curves'>")
    index = 0
    for (dataset, backbone), group in pairs.items():
        section = [f"<h2>{html.escape(dataset)} · {html.escape(backbone)}</h2>"]
        for role, run in _featured(group):
            index += 1
            plots = _run_plots(run, out, index)
            if plots:
                section.append(
                    f"<h3>{html.escape(role)}: {_head_cell(run)} ({_run_link(run, out)})</h3>"
                )
                section += plots
        parts += section if len(section) > 1 else []
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    return page


def retrieval_table(runs: list[Run], out: Path) -> str:
    """Retrieval runs, one row each (newest first per dataset and backbone): the protocol's
    settings, recall@k and mAP@R, the queries they rest on."""
    scores = sorted({k for r in runs for k in r.metrics.test.averaged()}, key=_rank_order)
    rows = [
        [
            r.config["dataset"],
            r.config["backbone"],
            r.metrics.chosen.get("metric", ""),
            r.metrics.chosen.get("gallery", ""),
            *(_num(r.metrics.test.averaged().get(k)) for k in scores),
            f"{r.metrics.fit_seconds:.2f}",
            _run_link(r, out),
        ]
        for r in sorted(runs, key=lambda r: (r.config["dataset"], r.config["backbone"]))
    ]
    return _table(rows, ["dataset", "backbone", "similarity", "gallery", *scores, "s", "run"])


def _rank_order(score: str) -> tuple[int, int]:
    """recall@1, recall@5, … by k, then mAP@R."""
    name, _, k = score.partition("@")
    return (0, int(k)) if name == "recall" and k.isdigit() else (1, 0)


def finetune_note(run: Run) -> str | None:
    """What a fine-tune run ran with (its options not at their defaults, as run.json records
    them) and which weights it kept; None for other runs."""
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
    scored = f"; val and test scored with test-time augmentation ({tta})" if tta != "none" else ""
    return f"Fine-tune options: {', '.join(options) or 'the defaults'}. Kept: {kept}{scored}."


def _run_plots(run: Run, out: Path, i: int) -> list[str]:
    """The HTML of one run's plots: the fine-tune options, sweep, confusion with per-class
    scores, regression, CAM, curves with diagnosis."""
    html_parts = []
    note = finetune_note(run)
    if note:
        html_parts.append(f"<p class='note'>{html.escape(note)}</p>")
    sweep = sweep_plot(run, out, i)
    if sweep:
        html_parts.append(f"<img src='{sweep}' alt='learning-rate sweep'>")
    confusion = confusion_plot(run, out, i)
    if confusion:
        html_parts.append(f"<img src='{confusion}' alt='confusion matrix'>")
        header = ["class", "precision", "recall", "F1", "test images"]
        html_parts.append(_table(per_class_rows(run), header))
    reliability = calibration_plot(run, out, i)
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
    regression = regression_plot(run, out, i)
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
    curves = curves_plot(run, out, i)
    if curves:
        html_parts.append(
            f"<img src='{curves[0]}' alt='training curves'>"
            f"<p><b>Diagnosis</b> — {html.escape(curves[1])}</p>"
        )
    return html_parts
