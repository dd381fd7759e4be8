"""``featpipe report``: one HTML page with PNG plots over every run in a directory.

Plots, where a picture says more than numbers: validation score against learning rate (one line
per weight decay), a backbone × dataset heatmap, few-shot curves, the confusion matrix of the
best head, and train/validation curves of torch heads with the fit diagnosis written beside
them. Fine-tune runs add their per-epoch curves.
"""

from __future__ import annotations

import functools
import html
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from featpipe.errors import FeatpipeError
from featpipe.reports.diagnosis import diagnose_history
from featpipe.runs.record import Run, list_runs


def _save(fig: plt.Figure, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


def _val(run: Run) -> float:
    value = run.metrics["val"]["mean"]
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
    import csv

    with (path / "rows.csv").open(newline="") as handle:
        return [r for r in csv.DictReader(handle) if r.get("lr") and r["head"] in ("linear", "mlp")]


def _has_sweep(run: Run) -> bool:
    return len({r["lr"] for r in _sweep_rows(run.path)}) > 1


def sweep_plot(run: Run, out: Path, index: int) -> str | None:
    """Validation score against lr, one line per wd, for each torch head type of a run."""
    rows = _sweep_rows(run.path)
    metric = f"val_{run.metrics['metric']}"
    lines: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        lines[(r["head"], r["wd"])][float(r["lr"])].append(float(r[metric]))
    if not lines or all(len(points) < 2 for points in lines.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for (head, wd), points in sorted(lines.items()):
        lrs = sorted(points)
        ax.plot(lrs, [np.mean(points[lr]) for lr in lrs], marker="o", label=f"{head}, wd={wd}")
    ax.set_xscale("log")
    ax.set(
        xlabel="learning rate",
        ylabel=metric.replace("_", " "),
        title=f"{run.config['dataset']} · {run.config['backbone']}",
    )
    ax.legend(fontsize=8)
    return _save(fig, out, f"sweep-{index}.png")


def heatmaps(best: dict[tuple[str, str], Run], out: Path) -> list[str]:
    """Backbone × dataset, one heatmap per metric (accuracy and R² do not share a scale)."""
    by_metric: dict[str, dict[tuple[str, str], Run]] = defaultdict(dict)
    for pair, run in best.items():
        by_metric[run.metrics["metric"]][pair] = run
    figures = []
    for metric, runs in sorted(by_metric.items()):
        datasets = sorted({d for d, _ in runs})
        backbones = sorted({b for _, b in runs})
        if len(datasets) * len(backbones) < 2:
            continue
        grid = np.full((len(backbones), len(datasets)), np.nan)
        for (d, b), run in runs.items():
            value = run.metrics["test"]["mean"]
            grid[backbones.index(b), datasets.index(d)] = (
                value if value == value else run.metrics["val"]["mean"]
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
    with_curves = [r for r in runs if r.metrics.get("few_shot")]
    if not with_curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in with_curves:
        pts = run.metrics["few_shot"]
        x = [p["per_class"] for p in pts]
        y = np.array([p["mean"] for p in pts])
        err = np.array([p["std"] for p in pts])
        ax.plot(x, y, marker="o", label=f"{run.config['dataset']} · {run.config['backbone']}")
        ax.fill_between(x, y - err, y + err, alpha=0.2)
    ax.set_xscale("log")
    ax.set(
        xlabel="training examples per class",
        ylabel="accuracy",
        title="sample efficiency (mean ± std over draws)",
    )
    ax.legend(fontsize=8)
    return _save(fig, out, "few-shot.png")


def confusion_plot(run: Run, out: Path, index: int) -> str | None:
    matrix = run.metrics.get("confusion")
    if not matrix:
        return None
    matrix = np.array(matrix)
    names = run.metrics["class_names"]
    size = 2 + 0.45 * len(names)
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


def curves_plot(run: Run, out: Path, index: int) -> tuple[str, str] | None:
    """Train/validation curves of the chosen torch head, with the diagnosis."""
    chosen = run.metrics["chosen"]
    curves = [c for c in run.curves() if c["config"] == chosen]
    if not curves or not curves[0]["history"].get("val_metric"):
        return None
    history = curves[0]["history"]
    finetune = run.config.get("kind") == "finetune"
    best_epoch = run.metrics["best_epoch"] if finetune else run.head().best_epoch
    diag = diagnose_history(history, len(run.metrics["class_names"]))
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
    left.plot(epochs, history["train_loss"], label="train")
    left.plot(epochs, history["val_loss"], label="validation")
    left.set(xlabel="epoch", ylabel="loss")
    right.plot(epochs, history["train_metric"], label="train")
    right.plot(epochs, history["val_metric"], label="validation")
    right.axvline(best_epoch + 1, color="grey", linestyle=":", label="kept epoch")
    right.set(xlabel="epoch", ylabel=run.metrics["metric"])
    right.legend(fontsize=8)
    params = curves[0]["config"]
    keys = ("unfreeze", "lr", "wd", "epochs")
    short = ", ".join(f"{k}={params[k]}" for k in keys if k in params)
    fig.suptitle(
        f"{run.config['dataset']} · {run.config['backbone']} · {params['head']}({short})",
        fontsize=9,
    )
    return _save(fig, out, f"curves-{index}.png"), diag.text() if diag else ""


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def report(runs_dir: Path, out: Path) -> Path:
    """Write ``out/index.html`` and its PNGs; returns the HTML path."""
    runs = list_runs(runs_dir)
    if not runs:
        raise FeatpipeError(f"no runs in {runs_dir}: fit something first")
    out.mkdir(parents=True, exist_ok=True)
    pairs = _pairs(runs)
    best = {pair: max(group, key=_val) for pair, group in pairs.items()}
    parts: list[str] = [
        "<html><head><meta charset='utf-8'><title>featpipe report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}</style></head>"
        f"<body><h1>featpipe report</h1><p>{len(runs)} runs from {html.escape(str(runs_dir))}"
        "</p>"
    ]
    summary = [
        [
            d,
            b,
            r.config.get("kind", "heads"),
            r.metrics["chosen_label"],
            r.metrics["metric"],
            f"{r.metrics['val']['mean']:.4f}",
            f"{r.metrics['test']['mean']:.4f}",
            r.metrics["selection"],
            f"{len(pairs[(d, b)])}",
            r.path.name,
        ]
        for (d, b), r in best.items()
    ]
    parts.append("<h2>Leaderboard (best run per dataset × backbone, by validation score)</h2>")
    header = ["dataset", "backbone", "kind", "chosen head", "metric", "val", "test"]
    parts.append(_table(summary, [*header, "selection", "runs", "run"]))
    figures = heatmaps(best, out)
    if figures:
        parts.append("<h2>Backbone × dataset</h2>")
        parts += [f"<img src='{f}'>" for f in figures]
    figure = few_shot_plot([r for group in pairs.values() for r in group], out)
    if figure:
        parts.append(f"<h2>Few-shot curves</h2><img src='{figure}'>")
    index = 0
    for (dataset, backbone), group in pairs.items():
        section = [f"<h2>{html.escape(dataset)} · {html.escape(backbone)}</h2>"]
        for role, run in _featured(group):
            index += 1
            plots = _run_plots(run, out, index)
            if plots:
                title = f"{role}: {run.metrics['chosen_label']} ({run.path.name})"
                section += [f"<h3>{html.escape(title)}</h3>", *plots]
        parts += section if len(section) > 1 else []
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    return page


def _run_plots(run: Run, out: Path, i: int) -> list[str]:
    """The HTML of one run's plots: sweep, confusion, CAM, curves with diagnosis."""
    html_parts = []
    for plot in (sweep_plot(run, out, i), confusion_plot(run, out, i)):
        if plot:
            html_parts.append(f"<img src='{plot}'>")
    if run.metrics.get("cam"):
        import shutil

        shutil.copy(run.path / run.metrics["cam"], out / f"cam-{i}.png")
        html_parts.append(
            f"<p>Class activation maps (validation images)</p><img src='cam-{i}.png'>"
        )
    curves = curves_plot(run, out, i)
    if curves:
        html_parts.append(
            f"<img src='{curves[0]}'><p><b>Diagnosis</b> — {html.escape(curves[1])}</p>"
        )
    return html_parts
