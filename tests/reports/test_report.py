"""The HTML report: every image and link resolves, the diagnosis never over-promises, and the
scores shown beside accuracy (balanced accuracy, AUROC, per-class) are scikit-learn's."""

from __future__ import annotations

import html.parser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from conftest import TINY_EXTRACT, TINY_FINETUNE, make_tree, write_image
from featpipe.fitting.stage import fit
from featpipe.heads import metrics
from featpipe.reports.diagnosis import diagnose
from featpipe.reports.report import per_class_rows, report
from featpipe.runs.metrics import RunMetrics
from featpipe.runs.record import Run


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if (tag, name) in (("img", "src"), ("a", "href")) and value:
                self.targets.append((tag, value))


def unresolved(page: Path) -> list[str]:
    """Every img src and a href of ``page`` that does not name an existing file or folder."""
    parser = _Links()
    parser.feed(page.read_text())
    assert parser.targets, "the report links to nothing"
    return [v for _, v in parser.targets if not (page.parent / unquote(v)).exists()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification sweep (2 heads × 2 lr × 2 wd × 2 seeds, few-shot) and a regression."""
    root = tmp_path_factory.mktemp("report")
    data = root / "shapes"
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        make_tree(
            data, classes=("a", "b"), per_class=8 if split == "train" else 5, split=split, seed=seed
        )
    options = TINY_EXTRACT | {"cache_dir": root / "cache"}
    fit(
        data,
        "test_efficientnet",
        grid={"head": ["linear", "mlp"], "lr": [1e-3, 1e-2], "wd": [0.0, 1e-4]},
        head={"epochs": 4},
        seeds=2,
        shots=[1, 3, "all"],
        draws=2,
        runs_dir=root / "runs",
        extract_options=options,
    )
    lines = ["path,label"]
    for i in range(24):
        write_image(root / "reg" / "img" / f"{i}.png", seed=100 + i)
        lines.append(f"img/{i}.png,{i / 23:.4f}")
    (root / "reg" / "targets.csv").write_text("\n".join(lines) + "\n")
    fit(
        root / "reg" / "targets.csv",
        "test_efficientnet",
        grid={"head": ["ridge"]},
        runs_dir=root / "runs",
        extract_options=options,
    )
    return root / "runs"


def test_every_image_and_link_of_the_report_resolves(runs: Path, tmp_path: Path) -> None:
    page = report(runs, tmp_path / "report")
    text = page.read_text()
    assert unresolved(page) == []
    for plot in ("sweep-", "few-shot.png", "confusion-", "curves-", "regression-"):
        assert plot in text, plot
    assert "balanced accuracy" in text and "auroc" in text and "test r2" in text
    assert text.count("<a href=") >= 2  # every leaderboard row links to its run folder
    assert "Diagnosis" in text and "validation images" in text


def test_report_check_catches_a_missing_plot(runs: Path, tmp_path: Path) -> None:
    page = report(runs, tmp_path / "report")
    next(page.parent.glob("sweep-*.png")).unlink()
    assert len(unresolved(page)) == 1


def test_regression_runs_record_test_predictions_and_split_sizes(runs: Path) -> None:
    from featpipe.runs.record import list_runs

    regression = [r for r in list_runs(runs) if r.metrics.task == "regression"]
    assert len(regression) == 1
    recorded = regression[0].metrics.test_predictions
    sizes = regression[0].metrics.split_sizes
    assert len(recorded.true) == len(recorded.predicted) == sizes["test"] > 0


@pytest.mark.parametrize(
    ("val_loss", "n_val", "deploy"),
    [
        (None, 2000, True),  # a good fit on a large validation split
        ([0.5, 0.3, 0.2, 0.22, 0.3, 0.32], 2000, False),  # loss rose 60% after epoch 3
        (None, 18, False),  # 0.0% error on 18 images: the interval reaches 18.5%
        (None, None, False),  # size not recorded
    ],
)
def test_diagnosis_says_deploy_only_when_the_evidence_carries_it(val_loss, n_val, deploy):
    diag = diagnose(0.995, 1.0 if n_val == 18 else 0.99, 0.5, val_loss, n_val)
    assert diag.verdict == "good fit"
    assert (diag.advice == "ready to deploy") == deploy, diag.text()
    if n_val:
        assert f"on {n_val} validation images" in diag.text()


def test_balanced_accuracy_and_auroc_match_scikit_learn() -> None:
    from scipy.special import softmax
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.25).astype(int)  # 3:1, like ELPV
    scores = rng.normal(size=(200, 2))
    scores[:, 1] += 1.5 * y
    pred = scores.argmax(1)
    out = metrics.classification(y, pred, 2, scores)
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    probability = softmax(scores, axis=1)[:, 1]  # what predict_proba gives
    assert out["auroc"] == pytest.approx(roc_auc_score(y, probability))
    assert "auroc" not in metrics.classification(y, pred, 2)  # no scores: no AUROC


def test_per_class_table_matches_scikit_learn() -> None:
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 3, 90), rng.integers(0, 3, 90)
    run = Run(
        Path("."),
        {},
        RunMetrics(confusion=metrics.confusion(y, pred, 3), class_names=["a", "b", "c"]),
    )
    precision, recall, f1, support = precision_recall_fscore_support(y, pred)
    for row, p, r, f, s in zip(per_class_rows(run), precision, recall, f1, support, strict=True):
        assert [float(v) for v in row[1:4]] == pytest.approx([p, r, f], abs=5e-4)
        assert int(row[4]) == s


def test_a_finetune_run_shows_the_options_it_ran_with(tmp_path: Path) -> None:
    from featpipe.finetuning.config import FinetuneConfig
    from featpipe.finetuning.stage import finetune

    data = make_tree(tmp_path / "imgs", classes=("a", "b"), per_class=6)
    options = {"auto_augment": "rand-m9-mstd0.5-inc1", "augment": True, "ema": 0.9}
    config = FinetuneConfig(**TINY_FINETUNE | options | {"epochs": 1, "tta": "dihedral"})
    _, result = finetune(data, config, runs_dir=tmp_path / "runs")
    text = report(tmp_path / "runs", tmp_path / "report").read_text()
    assert "Fine-tune options: " in text
    for shown in ("auto_augment=rand-m9-mstd0.5-inc1", "ema=0.9", "tta=dihedral", "epochs=1"):
        assert shown in text, shown
    assert "crop_scale=" not in text and "rot90=" not in text  # at their defaults: not listed
    kept = "EMA weights" if result.kept_weights == "ema" else "Kept: epoch"
    # the views score test only where they beat the plain image on val; else the report says so
    tta = "test-time augmentation (dihedral)" if result.tta == "dihedral" else result.tta_note
    assert kept in text and tta and tta in text
    assert not unresolved(tmp_path / "report" / "index.html")


def test_curves_mark_the_selected_epoch_and_name_the_refit(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dotted line is the epoch selection scored (the last, without early stopping), and a
    refitted run's plot says the saved head was trained again on train + val."""
    from featpipe.reports import plots
    from featpipe.runs.record import list_runs

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, name: figures.append(fig) or name)
    [run] = [r for r in list_runs(runs) if r.metrics.task != "regression"]
    assert run.metrics.trained_on == "train+val"
    assert plots.curves_plot(run, tmp_path, 0) is not None
    [fig] = figures
    epochs = len(run.curves()[0]["history"]["val_metric"])
    for ax in fig.axes:
        [marker] = [line for line in ax.get_lines() if line.get_label() == "selected epoch"]
        assert list(marker.get_xdata()) == [epochs, epochs]
    assert "refitted on train + val" in fig.texts[0].get_text()


def test_the_few_shot_plot_draws_each_point_s_interval(
    runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bar spans the interval fit recorded for the point (over the draws and the test
    images); a run recorded before intervals gets ± the draws' std, and its legend says so."""
    from dataclasses import replace

    from featpipe.reports import plots
    from featpipe.runs.record import list_runs

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, name: figures.append(fig) or name)
    [run] = [r for r in list_runs(runs) if r.metrics.few_shot]
    points = sorted(run.metrics.few_shot, key=lambda p: p.per_class)
    assert [p.draws for p in points] == [2, 2, 1] and all(p.interval for p in points)
    # an older run of the same curve: no intervals recorded
    older = replace(
        run, metrics=replace(run.metrics, few_shot=[replace(p, interval=None) for p in points])
    )
    assert plots.few_shot_plot([run, older], tmp_path) == "few-shot.png"
    [fig] = figures
    [ax] = fig.axes
    new, old = ax.containers  # one errorbar container per run, in order
    for container, low, high in (
        (new, [p.interval.low for p in points], [p.interval.high for p in points]),
        (old, [p.mean - p.std for p in points], [p.mean + p.std for p in points]),
    ):
        [bars] = container.lines[2]
        ends = np.array([segment[:, 1] for segment in bars.get_segments()])
        np.testing.assert_allclose(ends[:, 0], low)
        np.testing.assert_allclose(ends[:, 1], high)
        xs = [segment[0, 0] for segment in bars.get_segments()]
        assert xs == [p.per_class for p in points]
    # the two kinds of bar differ here, so the check above tells them apart
    assert not np.allclose([p.interval.low for p in points], [p.mean - p.std for p in points])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "recorded before intervals" not in labels[0] and "recorded before intervals" in labels[1]
    assert "95% interval over the draws and the test images" in ax.get_title()
    series = plots.few_shot_series([run])[0]
    assert series.low == [p.interval.low for p in points] and series.all_at == points[-1].per_class
