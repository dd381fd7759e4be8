"""The report's figures: each a PNG written beside the page, its file name returned.

Validation score against learning rate (one panel per head type, every weight decay visible,
seed spread as error bars), the backbone × dataset heatmap, few-shot curves with each point's
95% interval, the confusion matrix, the reliability diagram, predicted-vs-true and residuals for
regression, and train and validation curves with the fit diagnosis.
:mod:`featpipe.reports.report` lays them out.
"""

from __future__ import annotations

import csv
import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from featpipe.heads.config import HeadConfig
from featpipe.reports.diagnosis import diagnose_history
from featpipe.runs.record import Run

MARKERS = "osD^v<>p*h"


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


@functools.cache
def _sweep_rows(path: Path) -> list[dict[str, str]]:
    """Torch-head rows of a run (read once: a written run never changes)."""
    with (path / "rows.csv").open(newline="") as handle:
        return [r for r in csv.DictReader(handle) if r.get("lr") and r["head"] in ("linear", "mlp")]


def has_sweep(run: Run) -> bool:
    return len({r["lr"] for r in _sweep_rows(run.path)}) > 1


def head_label(run: Run) -> tuple[str, str]:
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


@dataclass(frozen=True)
class FewShotSeries:
    """One run's few-shot curve as the plot draws it: per point (in x order) training images
    per class, the mean accuracy over the draws and the bar's ends. ``bars`` says what the bars
    are: the 95% interval over the draws and the test images that the fit recorded with each
    point (:func:`featpipe.stats.few_shot_interval`; a point of one draw, as ``all``, the test
    images' alone), or for a run recorded before intervals the draws' standard deviation."""

    label: str
    x: list[int]
    y: list[float]
    low: list[float]
    high: list[float]
    bars: str
    all_at: int | None  # the "all" point's x (the whole train split), if the curve has one


INTERVAL_BARS = "95% interval over the draws and the test images (one draw: the test images)"
STD_BARS = "± std over the draws (recorded before intervals)"


def few_shot_series(runs: list[Run]) -> list[FewShotSeries]:
    """The few-shot curve of every run that has one, with each point's bar."""
    out = []
    for run in runs:
        pts = sorted(run.metrics.few_shot, key=lambda p: p.per_class)
        if not pts:
            continue
        recorded = all(p.interval is not None for p in pts)
        if recorded:
            low = [p.interval.low for p in pts]  # type: ignore[union-attr]
            high = [p.interval.high for p in pts]  # type: ignore[union-attr]
        else:
            low, high = [p.mean - p.std for p in pts], [p.mean + p.std for p in pts]
        out.append(
            FewShotSeries(
                f"{run.config['dataset']} · {run.config['backbone']} · {head_label(run)[0]}",
                [p.per_class for p in pts],
                [p.mean for p in pts],
                low,
                high,
                INTERVAL_BARS if recorded else STD_BARS,
                next((p.per_class for p in pts if p.shots == "all"), None),
            )
        )
    return out


def few_shot_plot(runs: list[Run], out: Path) -> str | None:
    """Accuracy against real training examples per class, one line per run, in x order; each
    point's bar is its 95% interval over the draws and the test images (where the run recorded
    one; the caption says which bars are which).

    The ``all`` point sits at the largest class's size (all of train) and is labelled so.
    """
    series = few_shot_series(runs)
    if not series:
        return None
    splits = {p.split for r in runs for p in r.metrics.few_shot}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, line in enumerate(series):
        y = np.array(line.y)
        below, above = y - np.array(line.low), np.array(line.high) - y
        old = "" if line.bars == INTERVAL_BARS else f" ({line.bars})"
        drawn = ax.errorbar(
            line.x,
            y,
            yerr=np.vstack([below, above]),
            marker=MARKERS[i % len(MARKERS)],
            capsize=3,
            label=line.label + old,
        )
        if line.all_at is not None:
            ax.annotate(
                f"all ({line.all_at})",
                (line.all_at, line.y[line.x.index(line.all_at)]),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=7,
                color=drawn[0].get_color(),
            )
    bars = {line.bars for line in series}
    ax.set_xscale("log")
    ax.set(
        xlabel="training examples per class (all = the whole train split)",
        ylabel=f"{'/'.join(sorted(splits))} accuracy",
        title=f"few-shot: accuracy on the {' and '.join(sorted(splits))} split, mean over draws"
        + (f"\n(bars: {INTERVAL_BARS})" if INTERVAL_BARS in bars else ""),
    )
    ax.title.set_fontsize(9)
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
    # epoch, or its best with early stopping); a refitted head (or network, ``finetune
    # --refit``) trained on train + val after it.
    best_epoch = run.metrics.best_epoch if finetune else run.selection_head().best_epoch
    refitted = run.metrics.trained_on == "train+val"
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
    saved = "network" if finetune else "head"
    refit = f" · then refitted on train + val (the saved {saved})" if refitted else ""
    fig.suptitle(
        f"{run.config['dataset']} · {run.config['backbone']} · {head_label(run)[0]}{refit}",
        fontsize=9,
    )
    return _save(fig, out, f"curves-{index}.png"), diag.text() if diag else ""
