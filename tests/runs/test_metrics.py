"""RunMetrics: every metrics.json format written so far reads; today's round-trips unchanged."""

from __future__ import annotations

import json
import math

import pytest

from featpipe.runs.metrics import CamFigure, FewShotPoint, Gain, Predictions, RunMetrics, Scores
from featpipe.stats import Interval

# What fit wrote before split sizes, test predictions and the refit (2edbc78).
OLD_FIT = {
    "task": "classification",
    "class_names": ["a", "b"],
    "selection": "cv5",
    "metric": "accuracy",
    "chosen": {"head": "logreg", "C": 1.0},
    "chosen_label": "logreg(C=1.0)",
    "val": {"mean": 0.8, "std": 0.01, "all": [{"accuracy": 0.79}, {"accuracy": 0.81}]},
    "test": {"mean": 0.75, "std": 0.05, "all": [{"accuracy": 0.7}, {"accuracy": 0.8}]},
    "confusion": [[3, 1], [0, 4]],
    "few_shot": [
        {
            "shots": "all",
            "per_class": 4,
            "split": "test",
            "mean": 0.75,
            "std": 0.0,
            "draws": 1,
            "scores": [0.75],
        }
    ],
    "extract_seconds": 1.5,
    "fit_seconds": 0.25,
    "n_configs": 3,
}
# What fit writes today: the old keys and split sizes, the refit, test predictions.
FIT = OLD_FIT | {
    "task": "regression",
    "selection": "val",
    "metric": "r2",
    "confusion": None,
    "few_shot": [],
    "split_sizes": {"train": 6, "val": 2, "test": 2},
    "trained_on": "train+val",
    "refit_note": "",
    "test_before_refit": {"mean": 0.5, "all": [{"r2": 0.5}]},
    "test_predictions": {"true": [1.0, 2.0], "predicted": [1.5, 2.5]},
    "calibration": None,  # a regression run's; classification: see the calibration test
}
R2 = {"estimate": 0.5, "low": 0.1, "high": 0.8, "n": 2, "method": "bootstrap BCa"}
SPLITS = {"estimate": 0.55, "low": 0.4, "high": 0.7, "n": 2, "method": "t over 2 splits"}
# ... and since issue 24: every score's n and interval, the configs' verdict, the warnings and
# the repeated splits.
FIT_WITH_INTERVALS = FIT | {
    "intervals": {"test": {"r2": R2 | {"confidence": 0.95, "unit": "images"}}},
    "verdict": "a and b are tied",
    "tied_with_best": ["a", "b"],
    "warnings": ["r2: validation and test differ"],
    "repeats": {
        "redrawn": "train/val/test",
        "chosen": ["a", "b"],
        "scores": {"r2": [0.5, 0.6]},
        "n_test": [2, 2],
        "n_train": [8, 8],
        "summary": {"r2": SPLITS | {"confidence": 0.95, "unit": "splits"}},
        "std": {"r2": 0.07},
        "seconds": 1.0,
        "correct": None,  # per-image correctness: classification on a fixed test split only
    },
}
# The first fine-tune runs (5f2755b): no backbone, start score, hold-out, precision or CAM notes.
OLD_FINETUNE = {
    "task": "classification",
    "class_names": ["a", "b"],
    "metric": "accuracy",
    "best_epoch": 2,
    "val": {"mean": 0.9, "std": 0.0, "all": [{"accuracy": 0.9}]},
    "test": {"mean": 0.85, "std": 0.0, "all": [{"accuracy": 0.85}]},
    "chosen": {"head": "finetune", "unfreeze": "last:1", "lr": 1e-4, "bn": "frozen"},
    "chosen_label": "finetune(last:1)",
    "selection": "val",
    "fit_seconds": 12.0,
    "extract_seconds": 0.0,
    "confusion": [[4, 0], [1, 3]],
    "few_shot": [],
    "cam": "cam.png",
}
FIGURE = {"file": "cam.png", "classes": ["a", "b"], "grid": 7, "size": 224}
# What fine-tune wrote before intervals (issue 24).
FINETUNE_BEFORE_INTERVALS = OLD_FINETUNE | {
    "backbone": "tf_efficientnet_lite0",
    "chosen": {"head": "finetune", "unfreeze": "last:1"},
    "start_val": 0.8,
    "holdout": None,
    "precision": "fp32",
    "cam_figure": FIGURE,
    "cam_note": None,
    "kept_weights": "ema",
    "tta": "dihedral",
}
ACCURACY = {"estimate": 0.85, "low": 0.7, "high": 0.93, "n": 8, "method": "wilson"}
GAIN = {"estimate": 0.05, "low": -0.1, "high": 0.2, "n": 8, "method": "paired bootstrap BCa"}
# What fine-tune writes today: split sizes, every score's interval, the warnings, the gain, and
# why the TTA asked for was left out ("": it was not).
FINETUNE = FINETUNE_BEFORE_INTERVALS | {
    "split_sizes": {"train": 30, "val": 8, "test": 8},
    "intervals": {"test": {"accuracy": ACCURACY | {"confidence": 0.95, "unit": "images"}}},
    "warnings": [],
    "gain": {
        "start": "runs/d/b/run",
        "metric": "accuracy",
        "difference": GAIN | {"confidence": 0.95, "unit": "images"},
        "p": 0.5,
        "test": "McNemar exact",
        "alpha": 0.05,
    },
    "gain_note": "",
    "trained_on": "train+val",  # --refit
    "test_before_refit": {"mean": 0.75, "std": 0.0, "all": [{"accuracy": 0.75}]},
    "tta_note": "",
}


def test_an_old_fit_record_reads_with_the_defaults_of_what_it_lacks() -> None:
    metrics = RunMetrics.from_dict(OLD_FIT)
    assert metrics.selection == "cv5" and metrics.chosen == {"head": "logreg", "C": 1.0}
    assert metrics.val == Scores(0.8, 0.01, [{"accuracy": 0.79}, {"accuracy": 0.81}])
    assert metrics.test.averaged() == {"accuracy": pytest.approx(0.75)}
    assert metrics.few_shot == [FewShotPoint("all", 4, "test", 0.75, 0.0, 1, [0.75])]
    assert metrics.confusion == [[3, 1], [0, 4]] and metrics.n_configs == 3
    # written before the refit: trained on train, nothing before a refit; no sizes recorded
    assert metrics.trained_on == "train" and metrics.test_before_refit is None
    assert metrics.split_sizes == {} and metrics.test_predictions is None
    again = metrics.to_dict()
    assert {k: again[k] for k in OLD_FIT} == OLD_FIT  # what it had, unchanged
    assert again["trained_on"] == "train" and again["test_before_refit"] is None


def test_an_old_fine_tune_record_reads_and_its_cam_file_is_kept() -> None:
    metrics = RunMetrics.from_dict(OLD_FINETUNE)
    assert metrics.best_epoch == 2 and metrics.cam == "cam.png" and metrics.cam_figure is None
    assert metrics.backbone == "" and metrics.start_val is None and metrics.precision == ""
    assert metrics.kept_weights == "raw" and metrics.tta == "none"  # before EMA and TTA
    assert metrics.chosen["lr"] == 1e-4  # the options it recorded then
    again = metrics.to_dict("finetune")
    assert {k: again[k] for k in OLD_FINETUNE} == OLD_FINETUNE


def test_a_fine_tune_that_recorded_its_cam_figure_under_cam_reads_both() -> None:
    """Between 6c6eb81 and 183c094 ``cam`` held the figure's details, or None for none."""
    then = {k: v for k, v in FINETUNE_BEFORE_INTERVALS.items() if k != "cam_figure"}
    metrics = RunMetrics.from_dict(then | {"cam": FIGURE})
    assert metrics.cam == "cam.png"
    assert metrics.cam_figure == CamFigure("cam.png", ["a", "b"], 7, 224)
    # written back as today's format: what it had, and the defaults of what came later
    assert metrics.to_dict("finetune") == FINETUNE_BEFORE_INTERVALS | {
        "split_sizes": {},
        "intervals": {},
        "warnings": [],
        "gain": None,
        "gain_note": "",
        "tta_note": "",
        "trained_on": "train",  # before --refit: trained on train
        "test_before_refit": None,
    }
    none = RunMetrics.from_dict(then | {"cam": None})
    assert none.cam == "" and none.cam_figure is None


def test_a_fit_before_intervals_reads_without_them() -> None:
    metrics = RunMetrics.from_dict(FIT)
    assert metrics.intervals == {} and metrics.repeats is None and metrics.warnings == []
    again = metrics.to_dict()
    assert {k: again[k] for k in FIT} == FIT


def test_intervals_and_repeats_read_as_their_types() -> None:
    metrics = RunMetrics.from_dict(FIT_WITH_INTERVALS)
    r2 = metrics.intervals["test"]["r2"]
    assert (r2.estimate, r2.low, r2.high, r2.n) == (0.5, 0.1, 0.8, 2)
    assert metrics.repeats is not None and metrics.repeats.summary["r2"].unit == "splits"
    assert metrics.repeats.scores == {"r2": [0.5, 0.6]}


@pytest.mark.parametrize(("kind", "record"), [("fit", FIT_WITH_INTERVALS), ("finetune", FINETUNE)])
def test_today_s_records_round_trip_with_exactly_their_keys(kind: str, record: dict) -> None:
    metrics = RunMetrics.from_dict(json.loads(json.dumps(record)))
    assert metrics.to_dict(kind) == record  # the same keys and values: other tools read them
    assert RunMetrics.from_dict(json.loads(json.dumps(metrics.to_dict(kind)))) == metrics


def test_typed_fields_of_today_s_records() -> None:
    fit = RunMetrics.from_dict(FIT)
    assert fit.test_before_refit == Scores(0.5, None, [{"r2": 0.5}])
    assert "std" not in fit.to_dict()["test_before_refit"]  # recorded without a spread
    assert fit.test_predictions == Predictions([1.0, 2.0], [1.5, 2.5])
    assert fit.split_sizes["val"] == 2 and fit.trained_on == "train+val"
    tuned = RunMetrics.from_dict(FINETUNE)
    assert tuned.start_val == 0.8 and tuned.precision == "fp32"
    assert tuned.intervals["test"]["accuracy"] == Interval(**ACCURACY)
    assert tuned.gain == Gain("runs/d/b/run", "accuracy", Interval(**GAIN), 0.5, "McNemar exact")
    assert tuned.split_sizes["test"] == 8
    assert tuned.kept_weights == "ema" and tuned.tta == "dihedral"
    assert tuned.cam_figure == CamFigure("cam.png", ["a", "b"], 7, 224)


def test_a_partial_record_takes_defaults_and_a_broken_one_is_refused() -> None:
    metrics = RunMetrics.from_dict({"metric": "accuracy", "val": {"mean": 0.75}})
    assert metrics.val.mean == 0.75 and metrics.val.std is None and metrics.val.all == []
    assert math.isnan(metrics.test.mean) and metrics.task == "classification"
    for broken in ({"val": 3}, {"few_shot": [{"shots": 1}]}, {"test_predictions": [1, 2]}):
        with pytest.raises(ValueError, match="not a run's metrics"):
            RunMetrics.from_dict(broken)


def test_a_calibration_record_round_trips_and_older_fits_have_none() -> None:
    calibrated = {"ece": 0.1, "nll": 0.5, "brier": 0.3}
    bins = {"confidence": [None, 0.7], "accuracy": [None, 0.6], "count": [0, 4]}
    record = OLD_FIT | {
        "calibration": {
            "head": "selection",
            "before": calibrated | bins,
            "after": calibrated | bins | {"ece": 0.05},
            "temperature": 1.7,
            "note": "",
        }
    }
    metrics = RunMetrics.from_dict(json.loads(json.dumps(record)))
    assert metrics.calibration.after.ece == 0.05 and metrics.calibration.before.count == [0, 4]
    assert metrics.to_dict("fit")["calibration"] == record["calibration"]
    assert RunMetrics.from_dict(OLD_FIT).calibration is None
    assert "calibration" not in RunMetrics.from_dict(OLD_FIT).to_dict("finetune")


def test_only_runs_that_score_test_images_write_intervals_and_only_fine_tunes_a_gain() -> None:
    tuned = RunMetrics.from_dict(FINETUNE)
    assert {"intervals", "warnings", "split_sizes"} <= set(tuned.to_dict("fit"))
    assert "gain" not in tuned.to_dict("fit") and "verdict" not in tuned.to_dict("finetune")
    retrieval = set(tuned.to_dict("retrieval"))  # its scores' intervals, over queries
    assert "intervals" in retrieval and not {"warnings", "split_sizes", "gain"} & retrieval
    assert not {"intervals", "warnings", "split_sizes", "gain"} & set(tuned.to_dict("compare"))
