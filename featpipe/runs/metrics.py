"""A run's ``metrics.json`` as one type, :class:`RunMetrics`: written by fit and fine-tune alike,
read by the report, ``compare``, LP-FT's start and notebooks through attributes.

Every run records the task, how it selected, the chosen config and its validation and test
scores; runs that trained a head (fit and fine-tune) their split sizes and every score's n and
95% interval with the warnings; each kind adds its own fields (a fit: the refit, test
predictions and its configs' verdict; a fine-tune: its best epoch, precision, CAM figure and
what it gained over the head it started from). :meth:`RunMetrics.to_dict` writes the
common fields and those of the run's kind, so ``metrics.json`` keeps the keys it has always had
(other tools read it). :meth:`RunMetrics.from_dict` reads every format written so far: a field
added later (split sizes and test predictions, the refit, the fine-tune's backbone, start
score, hold-out, precision and CAM details, the intervals and the gain) takes its default
where a run lacks it, and the
CAM figure that fine-tune runs once recorded under ``cam`` is read from there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Self

import numpy as np

from featpipe.stats import METRICS, Interval
from featpipe.stats.paired import format_p

FIT, FINETUNE, RETRIEVAL = "fit", "finetune", "retrieval"
# field metadata: recorded by runs of these kinds only (and only they write it)
_FIT_ONLY, _FINETUNE_ONLY = {"kinds": (FIT,)}, {"kinds": (FINETUNE,)}
_TRAINED = {"kinds": (FIT, FINETUNE)}  # runs that trained a head: fit and fine-tune
_SCORED = {"kinds": (FIT, RETRIEVAL)}  # comparisons between configs or feature sets
_INTERVALS = {"kinds": (FIT, FINETUNE, RETRIEVAL)}  # every run that scores on test images


class _Record:
    """A dataclass whose fields JSON holds as they are: written and read field by field."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class Scores:
    """A split's scores of the chosen config: the selection metric's mean and spread over the
    seeds (NaN: not scored), and every metric of every seed."""

    mean: float = math.nan
    std: float | None = None  # None: not recorded (a fit's scores before its refit)
    all: list[dict[str, float]] = field(default_factory=list)

    def averaged(self) -> dict[str, float]:
        """Every metric averaged over the seeds that recorded it."""
        names = {k for scores in self.all for k in scores}
        return {k: float(np.mean([s[k] for s in self.all if k in s])) for k in names}

    def to_dict(self) -> dict[str, Any]:
        spread = {} if self.std is None else {"std": self.std}
        return {"mean": self.mean, **spread, "all": self.all}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Scores:
        data = data or {}
        return cls(data.get("mean", math.nan), data.get("std"), list(data.get("all") or []))


@dataclass(frozen=True)
class FewShotPoint(_Record):
    """One point of a few-shot curve: accuracy on ``split`` over ``draws`` draws of ``shots``
    training images per class (``"all"``: the whole train split, ``per_class`` its largest
    class)."""

    shots: int | str
    per_class: int
    split: str
    mean: float
    std: float
    draws: int
    scores: list[float]
    # the mean's 95% interval over the draws and the test images (None: recorded before)
    interval: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        """A point recorded without an interval is written as it was then."""
        data = asdict(self)
        return data if self.interval is not None else {k: data[k] for k in data if k != "interval"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FewShotPoint:
        interval = data.get("interval")
        return cls(
            **{f.name: data[f.name] for f in fields(cls) if f.name != "interval"},
            interval=_interval(interval) if interval else None,
        )


@dataclass(frozen=True)
class Predictions(_Record):
    """A regression head's test predictions beside the true values (the report plots them)."""

    true: list[float]
    predicted: list[float]


@dataclass(frozen=True)
class CamFigure(_Record):
    """What a fine-tune's ``cam.png`` shows: the classes it has rows for, and the final map's
    side."""

    file: str
    classes: list[str]
    grid: int  # cells a side of the final map the maps were computed from
    size: int  # input size the maps were computed at


@dataclass(frozen=True)
class Gain:
    """What fine-tuning changed against the head it started from, on the same test images
    (paired image by image): ``difference`` is fine-tune − start head in ``metric``, with its
    paired-bootstrap 95% interval and n; ``p`` the two-sided p of no difference, from ``test``
    (McNemar exact for accuracy, the paired bootstrap otherwise); ``start`` the directory of
    the run whose head it started from; ``alpha`` the level it is called a difference at."""

    start: str
    metric: str
    difference: Interval
    p: float
    test: str
    alpha: float = 0.05

    def __str__(self) -> str:
        """``fine-tuning gained 4.1 points [1.2, 7.0] of test accuracy over the head it started
        from (n=44), p = 0.006 (McNemar exact)``; a loss is said as one, with its interval."""
        d = self.difference
        verb = "gained" if d.estimate >= 0 else "lost"
        if d.estimate < 0:  # the loss and its interval, as positive amounts
            d = replace(d, estimate=-d.estimate, low=-d.high, high=-d.low)
        proportion = METRICS[self.metric].proportion if self.metric in METRICS else False
        amount = (
            d.format(100, extra_digit=False, unit=" points")
            if proportion
            else d.format(extra_digit=False)
        )
        tied = "" if self.p <= self.alpha else ": no difference these test images can tell"
        return (
            f"fine-tuning {verb} {amount} of test {self.metric} over the head it started from "
            f"({d.count()}), {format_p(self.p)} ({self.test}){tied}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Gain:
        return cls(**{**data, "difference": _interval(data["difference"])})


def _interval(data: Mapping[str, Any]) -> Interval:
    return Interval(**{f.name: data[f.name] for f in fields(Interval) if f.name in data})


def _intervals(data: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Interval]:
    return {k: _interval(v) for k, v in (data or {}).items()}


def correct_matrix(correct: list[str]) -> np.ndarray:
    """:attr:`Repeats.correct` as an R × n float matrix of 1s and 0s."""
    return np.array(
        [np.frombuffer(row.encode("ascii"), np.uint8) - ord("0") for row in correct], float
    )


# what a repeat draws again (Repeats.redrawn)
REDRAWN_ALL, REDRAWN_VAL, REDRAWN_FOLDS = "train/val/test", "val", "cv folds"


@dataclass(frozen=True)
class Repeats:
    """A fit repeated over re-drawn splits (``--repeats``): what each split chose and scored on
    its test images, and every metric across the splits (mean, its interval, the standard
    deviation across splits).

    ``redrawn``: what was drawn again each time, ``train/val/test`` (data without fixed
    splits), ``val`` (a fixed test split: the val carve-out) or ``cv folds`` (a fixed test
    split and no val: the folds of cross-validation). Split 0 is the data's own split (the
    run's head, predictions and intervals are its); split r ≥ 1 draws with seed r.
    """

    redrawn: str
    chosen: list[str]
    scores: dict[str, list[float]]  # metric → its test score on every split
    n_test: list[int]
    n_train: list[int]
    summary: dict[str, Interval]  # metric → mean over splits, interval across splits
    std: dict[str, float]  # metric → standard deviation across splits
    seconds: float = 0.0
    # a fixed test split (every split scored on the same test images): per split, one
    # character per test image in split 0's test order, "1" classified correctly, "0" not;
    # what the two-way bootstrap over splits and images reads (featpipe.stats.splits)
    correct: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Repeats:
        return cls(**{**data, "summary": _intervals(data.get("summary"))})


@dataclass(frozen=True)
class Calibrated(_Record):
    """How far one set of test probabilities can be taken at their word
    (:mod:`featpipe.protocols.calibration`): ECE over 15 bins, NLL, Brier score, and the
    reliability diagram's bins (mean confidence and accuracy per bin, None where it is empty;
    the count of each)."""

    ece: float
    nll: float
    brier: float
    confidence: list[float | None]
    accuracy: list[float | None]
    count: list[int]


@dataclass(frozen=True)
class Calibration:
    """A classification run's calibration on test: as its head predicts (``before``) and after
    temperature scaling fitted on the val split (``after``, with its ``temperature``; None where
    it could not be fitted, ``note`` says why). ``head``: which head was scored: ``chosen``, or
    after a refit on train + val ``selection``, the train-only head that val is held out from."""

    head: str
    before: Calibrated
    after: Calibrated | None = None
    temperature: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        after = data.get("after")
        return cls(
            data["head"],
            Calibrated.from_dict(data["before"]),
            Calibrated.from_dict(after) if after else None,
            data.get("temperature"),
            data.get("note", ""),
        )


@dataclass(frozen=True)
class RunMetrics:
    """What a run measured (its ``metrics.json``). The defaults are what a run that predates a
    field means by its absence."""

    task: str = "classification"
    class_names: list[str] = field(default_factory=list)
    selection: str = "val"  # "val", or "cvK": k-fold cross-validation of train
    metric: str = ""  # the selection metric (accuracy, r2); every format records it
    chosen: dict[str, Any] = field(default_factory=dict)  # the chosen config's options
    chosen_label: str = ""
    val: Scores = field(default_factory=Scores)
    test: Scores = field(default_factory=Scores)
    confusion: list[list[int]] | None = None  # test confusion matrix (classification)
    few_shot: list[FewShotPoint] = field(default_factory=list)
    extract_seconds: float = 0.0
    fit_seconds: float = 0.0
    # a fit's and a fine-tune's: images per split the scores rest on (train after any hold-out)
    split_sizes: dict[str, int] = field(default_factory=dict, metadata=_TRAINED)
    # a fit's and a fine-tune's: what the kept head (network) was trained on ("train", or
    # "train+val" after a refit) and the test scores of what selection chose, before the
    # refit; a fit's: why a refit asked for was not made; regression test predictions; configs
    trained_on: str = field(default="train", metadata=_TRAINED)
    test_before_refit: Scores | None = field(default=None, metadata=_TRAINED)
    refit_note: str = field(default="", metadata=_FIT_ONLY)
    test_predictions: Predictions | None = field(default=None, metadata=_FIT_ONLY)
    n_configs: int = field(default=1, metadata=_FIT_ONLY)
    # a fit's calibration on test, before and after temperature scaling (classification)
    calibration: Calibration | None = field(default=None, metadata=_FIT_ONLY)
    # trust in the numbers (issue 24; absent before), a fit's and a fine-tune's: per split (val:
    # the chosen config as selection scored it, or the fine-tune's kept weights; test: the
    # run's head) every metric with its n and 95% interval; the validation–test gap and
    # below-chance warnings. A fit's: the configs compared with the best on the selection
    # images ("A and B are tied; ..."), and those tied with it; the splits of --repeats. The
    # per-image predictions they came from are in predictions.npz.
    # A retrieval run records its scores' intervals (n: queries) and, retrieved beside other
    # feature sets, one line per score comparing them on the same queries.
    intervals: dict[str, dict[str, Interval]] = field(default_factory=dict, metadata=_INTERVALS)
    warnings: list[str] = field(default_factory=list, metadata=_TRAINED)
    verdict: str = field(default="", metadata=_SCORED)
    tied_with_best: list[str] = field(default_factory=list, metadata=_FIT_ONLY)
    repeats: Repeats | None = field(default=None, metadata=_FIT_ONLY)
    # a fine-tune's: its backbone; the best epoch (-1: none beat the start head) and which of
    # its weights were kept (raw, or ema: their moving average scored better on val); the
    # test-time augmentation of its val and test scores (and why the one asked for was left
    # out: it scored worse on val); the start head's val score, the share
    # of train held out as val (None: the data's val split), the precision, the CAM figure's
    # file ("" for none), what it shows, and why there is none; what it gained over the head
    # it started from on the same test images, or why that could not be compared
    backbone: str = field(default="", metadata=_FINETUNE_ONLY)
    best_epoch: int = field(default=0, metadata=_FINETUNE_ONLY)
    kept_weights: str = field(default="raw", metadata=_FINETUNE_ONLY)
    tta: str = field(default="none", metadata=_FINETUNE_ONLY)
    tta_note: str = field(default="", metadata=_FINETUNE_ONLY)
    start_val: float | None = field(default=None, metadata=_FINETUNE_ONLY)
    holdout: float | None = field(default=None, metadata=_FINETUNE_ONLY)
    precision: str = field(default="", metadata=_FINETUNE_ONLY)
    cam: str = field(default="", metadata=_FINETUNE_ONLY)
    cam_figure: CamFigure | None = field(default=None, metadata=_FINETUNE_ONLY)
    cam_note: str | None = field(default=None, metadata=_FINETUNE_ONLY)
    gain: Gain | None = field(default=None, metadata=_FINETUNE_ONLY)
    gain_note: str = field(default="", metadata=_FINETUNE_ONLY)

    def to_dict(self, kind: str = FIT) -> dict[str, Any]:
        """``metrics.json`` of a run of ``kind``: the common fields and that kind's own."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)
            if kind in f.metadata.get("kinds", (kind,))
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunMetrics:
        """Any ``metrics.json`` written so far (see the module docstring); unknown keys are
        left out. Raises ``ValueError`` for one that is not a record of these fields."""
        try:
            return cls._parse(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a run's metrics ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> RunMetrics:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        cam, figure = data.get("cam") or "", data.get("cam_figure")
        if isinstance(cam, Mapping):  # fine-tunes once recorded the figure itself as "cam"
            cam, figure = cam["file"], cam
        before, predictions = data.get("test_before_refit"), data.get("test_predictions")
        calibration = data.get("calibration")
        return cls(
            **values
            | {
                "val": Scores.from_dict(data.get("val")),
                "test": Scores.from_dict(data.get("test")),
                "confusion": data.get("confusion"),
                "few_shot": [FewShotPoint.from_dict(p) for p in data.get("few_shot") or []],
                "split_sizes": {k: int(v) for k, v in (data.get("split_sizes") or {}).items()},
                "test_before_refit": Scores.from_dict(before) if before else None,
                "test_predictions": Predictions.from_dict(predictions) if predictions else None,
                "calibration": Calibration.from_dict(calibration) if calibration else None,
                "cam": cam,
                "cam_figure": CamFigure.from_dict(figure) if figure else None,
                "start_val": data.get("start_val"),
                "holdout": data.get("holdout"),
                "cam_note": data.get("cam_note"),
                "intervals": {
                    split: _intervals(scores)
                    for split, scores in (data.get("intervals") or {}).items()
                },
                "repeats": Repeats.from_dict(data["repeats"]) if data.get("repeats") else None,
                "gain": Gain.from_dict(data["gain"]) if data.get("gain") else None,
            }
        )


def _plain(value: Any) -> Any:
    """A field as JSON holds it."""
    if isinstance(value, Scores | _Record | Calibration | Repeats | Gain):
        return value.to_dict()
    if isinstance(value, Interval):
        return asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
