"""The fine-tune stage: plan, train, evaluate the best epoch, draw its CAM, write the run.

A fine-tune trains in its run directory (so ``out`` resumes from the checkpoint there); when
training ends, the one run writer completes that directory in place with the same record a fit
run has (``run.json``, ``metrics.json`` with every score's n and 95% interval, ``rows.csv``,
``curves.json``, ``head/``, ``predictions.npz``), plus the trained backbone's weights, so
``predict`` and ``export`` serve a fine-tune run as they serve a fit run, and ``results`` and
the report show its scores with their intervals as a fit's (:mod:`featpipe.finetuning.trust`).
"""

from __future__ import annotations

import copy
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from featpipe.backbones.build import Backbone
from featpipe.cache.key import KeyFields
from featpipe.data.datasets import Dataset
from featpipe.data.transforms import ImageToUint8, fingerprint
from featpipe.errors import DataError, StorageError
from featpipe.finetuning.cam import (
    NotApplicable,
    cam_size,
    class_activation_maps,
    pick_tiles,
    save_cam_figure,
)
from featpipe.finetuning.checkpoint import BEST, CHECKPOINT
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.refit import REFIT_DIR, refit
from featpipe.finetuning.trainer import EpochProgress, Evaluation, Trainer, better
from featpipe.finetuning.trust import Trust, assess_finetune
from featpipe.fitting.run import interval_columns
from featpipe.heads import metrics
from featpipe.heads.config import HeadConfig
from featpipe.heads.fitted import FittedHead
from featpipe.heads.preprocess import Preprocessor
from featpipe.progress import Phase, quiet
from featpipe.runs.metrics import CamFigure, RunMetrics, Scores
from featpipe.runs.predictions import FILE as PREDICTIONS_FILE
from featpipe.runs.predictions import SELECTION_TEST
from featpipe.runs.record import DEFAULT_RUNS_DIR, Run, load_run, write_run
from featpipe.stats import Interval

BACKBONE_STATE = "backbone.safetensors"
CAM_FILE = "cam.png"


class CamFigureWarning(UserWarning):
    """The optional CAM figure failed; the run was written without it."""


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tune run measured, as its ``metrics.json`` records it."""

    task: str
    backbone: str
    class_names: list[str]
    metric: str
    freezing: str
    best_epoch: int  # -1: no epoch beat the head the run started from (kept)
    kept_weights: str  # raw, or ema: the moving average of that epoch scored better on val
    tta: str  # the test-time augmentation of the val and test scores
    tta_note: str  # why the one asked for was left out (it did worse on val); "" if it was not
    start_val: float | None  # the start run's head on val, before any epoch
    val: dict[str, float]
    test: dict[str, float]
    history: dict[str, list[Any]]
    confusion: list[list[int]] | None
    precision: str
    holdout: float | None  # share of train held out as val; None: the data's val split
    seconds: float
    cam: CamFigure | None
    cam_note: str | None  # why there is no cam.png
    split_sizes: dict[str, int]  # train (after any hold-out), val and test images
    # every score's n and interval per split, the warnings, the gain over the start head
    trust: Trust
    # what the kept network trained on: "train", or "train+val" after --refit; then the test
    # scores of the weights val chose, before the refit (what the refit changed)
    trained_on: str = "train"
    test_before_refit: dict[str, float] | None = None
    # training images (of those the kept network trained on) with a --soft-labels row
    soft_labelled: int = 0

    @property
    def trained_images(self) -> int:
        """How many images the kept network trained on: train, and val too after a refit."""
        sizes = self.split_sizes
        return sizes["train"] + (sizes["val"] if self.trained_on == "train+val" else 0)

    @property
    def val_score(self) -> float:
        return self.val[self.metric]

    @property
    def test_score(self) -> float:
        return self.test.get(self.metric, float("nan"))

    def interval(self, split: str) -> Interval | None:
        """The selection metric's 95% interval on ``split`` (None: not scored there)."""
        return self.trust.intervals.get(split, {}).get(self.metric)

    def to_metrics(self) -> RunMetrics:
        """The run's ``metrics.json``: the fields a fit run has, plus the fine-tune's own."""
        return RunMetrics(
            task=self.task,
            backbone=self.backbone,
            class_names=self.class_names,
            metric=self.metric,
            best_epoch=self.best_epoch,
            kept_weights=self.kept_weights,
            tta=self.tta,
            tta_note=self.tta_note,
            start_val=self.start_val,
            val=Scores(self.val_score, 0.0, [self.val]),
            test=Scores(self.test_score, 0.0, [self.test]),
            chosen={"head": "finetune", "unfreeze": self.freezing},
            chosen_label=f"finetune({self.freezing})",
            selection="val",
            holdout=self.holdout,
            precision=self.precision,
            fit_seconds=self.seconds,
            extract_seconds=0.0,
            confusion=self.confusion,
            few_shot=[],
            cam=self.cam.file if self.cam else "",  # the file, as run format 1 recorded it
            cam_figure=self.cam,
            cam_note=self.cam_note,
            split_sizes=self.split_sizes,
            intervals=self.trust.intervals,
            warnings=self.trust.warnings,
            gain=self.trust.gain,
            gain_note=self.trust.gain_note,
            trained_on=self.trained_on,
            test_before_refit=(
                None
                if self.test_before_refit is None
                else Scores(self.test_before_refit[self.metric], 0.0, [self.test_before_refit])
            ),
        )


def _images(trainer: Trainer, indices: list[int], size: int) -> torch.Tensor:
    """Validation images through the eval transform, at ``size`` px (uint8 NCHW)."""
    data_config = dict(trainer.backbone.data_config)
    data_config["input_size"] = (3, size, size)
    transform = ImageToUint8(data_config, draft=False)
    root = trainer.plan.dataset.root
    return torch.stack([transform(str(root / trainer.plan.val[i].relpath)) for i in indices])


def draw_cam(trainer: Trainer, val: Evaluation, out: Path) -> CamFigure:
    """``cam.png``: per class, correct and wrong validation predictions with their maps.

    Raises :class:`~featpipe.finetuning.cam.NotApplicable` when CAM does not apply.
    """
    dataset = trainer.plan.dataset
    # positions among the scored rows (an image that failed to decode has none)
    labels = np.array([trainer.plan.val[i].label for i in val.index])
    rows = pick_tiles(labels, val.pred)
    indices = [i for row in rows for i in (*row.correct, *row.wrong)]
    trainer.model.eval()
    size, _ = cam_size(
        trainer.model.backbone, trainer.backbone.data_config["input_size"][-1], trainer.device
    )
    images = _images(trainer, [int(val.index[i]) for i in indices], size)
    x = trainer.normalize(images.to(trainer.device))
    classes = torch.as_tensor(val.pred[indices])
    maps = class_activation_maps(trainer.model.backbone, trainer.model.head, x, classes)
    _, grid = cam_size(trainer.model.backbone, size, trainer.device)
    save_cam_figure(
        rows,
        {i: images[k].permute(1, 2, 0).numpy() for k, i in enumerate(indices)},
        {i: maps[k] for k, i in enumerate(indices)},
        val.pred,
        dataset.class_names,
        out / CAM_FILE,
    )
    return CamFigure(CAM_FILE, [dataset.class_names[r.label] for r in rows], grid, size)


def _optional_cam(trainer: Trainer, val: Evaluation) -> tuple[CamFigure | None, str | None]:
    """The CAM figure, or the reason there is none; its failure never costs the trained run."""
    if trainer.plan.dataset.task != "classification":
        return None, "CAM is drawn for classification"
    try:
        return draw_cam(trainer, val, trainer.plan.out), None
    except NotApplicable as exc:
        return None, f"CAM does not apply to {trainer.config.backbone}: {exc}"
    except Exception as exc:  # an optional figure must never cost hours of training
        note = f"CAM figure failed ({type(exc).__name__}: {exc}); the run is written without it"
        warnings.warn(note, CamFigureWarning, stacklevel=2)
        return None, note


def _head(trainer: Trainer) -> FittedHead:
    """The trained head as a fit run saves one (predict and export load it the same way)."""
    plan = trainer.plan
    dim = trainer.backbone.num_features
    if plan.start is not None:  # model.head = Sequential(the run's preprocessing, its head)
        config, preprocessor = plan.start.head.config, plan.start.head.preprocessor
        module = trainer.model.head[1]
    else:
        # a fresh head sees the pooled features as they are: the config says so
        config = HeadConfig(head=trainer.config.head, standardize=False, l2norm=False)
        preprocessor = Preprocessor(standardize=False).fit(np.zeros((1, dim), np.float32))
        module = trainer.model.head
    return FittedHead(
        config=config,
        preprocessor=preprocessor,
        module=copy.deepcopy(module).cpu().eval(),
        class_names=plan.dataset.class_names,
        task=plan.dataset.task,
        n_features=dim,
        best_epoch=max(0, trainer.state.best_epoch),
    )


def _backbone_entry(backbone: Backbone, precision: str, state: str) -> dict[str, Any]:
    """The run's record of its network, which it did not read from the cache.

    Same fields as a fit run's entries (``key_fields`` as in the cache key), so one reader
    (:func:`featpipe.use.predict.load_pipeline`) rebuilds both; ``state`` names the run's file
    holding the trained backbone weights.
    """
    spec = backbone.spec
    fields = KeyFields(
        model=spec.model,
        weights=backbone.weights_identity,
        transform=fingerprint(backbone.data_config, False),
        pool=spec.pool,
        layer=spec.layer,
        precision=precision,
        dtype="float32",
    )
    return {
        "model": spec.model,
        "weights": spec.weights,
        "key_fields": asdict(fields),
        "state": state,
    }


def chosen_tta(trainer: Trainer, asked: str) -> tuple[str, Evaluation, str]:
    """The test-time augmentation the run's scores use, its val evaluation, and why the one
    asked for was left out ("" when it was not).

    Averaging over views helps only a model that treats them alike: on ELPV the dihedral
    average took the kept weights (the start head's, trained on unrotated cells) from val
    accuracy 0.881 to 0.841, and test from 0.841 to 0.825. So the views must beat the plain
    image on val, as the EMA must beat the raw weights, before they score test.
    """
    plan, metric, select_by = trainer.plan, trainer.plan.metric, trainer.config.select_by
    with_views = trainer.evaluate(plan.val, tta=asked)
    if asked == "none":
        return asked, with_views, ""
    plain = trainer.evaluate(plan.val)
    scores = [(e.metrics[metric], e.loss) for e in (with_views, plain)]
    if better(select_by, *scores):
        return asked, with_views, ""
    shown, at = (metric, 0) if select_by == "metric" else ("loss", 1)
    note = (
        f"--tta {asked} left out: val {shown} {scores[0][at]:.4f} with it, "
        f"{scores[1][at]:.4f} without"
    )
    return "none", plain, note


def finish(
    trainer: Trainer, seconds: float, refitted: Trainer | None = None
) -> tuple[Run, FinetuneResult]:
    """Evaluate the best weights, draw the CAM, and complete the run directory.

    ``trainer`` chose the epoch, the weights and the TTA on val, and its network is the run's,
    unless ``--refit`` trained it again on train + val (``refitted``,
    :mod:`featpipe.finetuning.refit`): then that network is kept and scored on test, and the
    chosen one's test scores are recorded beside it.
    """
    kept = refitted or trainer
    plan, config = trainer.plan, trainer.config
    dataset = plan.dataset
    trainer.load_best()
    tta, val, tta_note = chosen_tta(trainer, config.tta)
    test = kept.evaluate(plan.test, tta=tta) if plan.test else None
    before = trainer.evaluate(plan.test, tta=tta) if plan.test and refitted else None
    evaluations = {"val": val} | ({"test": test} if test is not None else {})
    if before is not None:
        evaluations[SELECTION_TEST] = before
    n_classes = len(dataset.class_names)
    trust = assess_finetune(
        {"val": plan.val, "test": plan.test, SELECTION_TEST: plan.test},
        evaluations,
        dataset.task,
        n_classes,
        plan.metric,
        plan.start.path if plan.start is not None else None,
    )
    confusion = None
    if test is not None and dataset.task == "classification":
        y = trust.predictions.splits["test"].y
        confusion = metrics.confusion(y, test.pred, n_classes)
    cam, cam_note = _optional_cam(trainer, val)
    result = FinetuneResult(
        task=dataset.task,
        backbone=str(config.backbone),
        class_names=dataset.class_names,
        metric=plan.metric,
        freezing=config.freezing,
        best_epoch=trainer.state.best_epoch,
        kept_weights=trainer.state.best_weights,
        tta=tta,
        tta_note=tta_note,
        start_val=trainer.state.start_metric,
        val=val.metrics,
        test=test.metrics if test else {},
        history=trainer.state.history,
        confusion=confusion,
        precision=plan.precision,
        holdout=plan.holdout,
        seconds=seconds,
        cam=cam,
        cam_note=cam_note,
        split_sizes={"train": len(plan.train), "val": len(plan.val), "test": len(plan.test)},
        trust=trust,
        trained_on="train" if refitted is None else "train+val",
        test_before_refit=before.metrics if before is not None else None,
        soft_labelled=soft.covered(kept.plan.train) if (soft := plan.soft_labels) else 0,
    )
    row = {
        "head": "finetune",
        "unfreeze": config.freezing,
        "lr": config.lr,
        "wd": config.wd,
        "bn": config.bn,
        "precision": plan.precision,
        "seed": config.seed,
        **{f"val_{k}": v for k, v in result.val.items()},
        **{f"test_{k}": v for k, v in result.test.items()},
        **interval_columns(trust.intervals),
        "fit_seconds": seconds,
        "chosen": True,
    }
    curves = [
        {
            "config": {"head": "finetune", "unfreeze": config.freezing},
            "label": f"finetune({config.freezing})",
            "seed": config.seed,
            "history": trainer.state.history,
        }
    ]
    if refitted is not None:  # its epochs on train + val: train columns only, nothing on val
        curves.append(
            curves[0]
            | {
                "config": curves[0]["config"] | {"refit": True},
                "label": f"finetune({config.freezing}) refit on train + val",
                "history": refitted.state.history,
            }
        )
    backbone_state = {k: v.contiguous().cpu() for k, v in kept.model.backbone.state_dict().items()}
    run = write_run(
        kind="finetune",
        dataset=dataset.name,
        dataset_root=str(dataset.root),
        backbone=str(config.backbone),
        request=asdict(config),
        metrics=result.to_metrics(),
        rows=[row],
        curves=curves,
        entries=[_backbone_entry(trainer.backbone, plan.precision, BACKBONE_STATE)],
        head=_head(kept),
        files={
            BACKBONE_STATE: lambda path: save_file(backbone_state, str(path)),
            PREDICTIONS_FILE: trust.predictions.save,
        },
        extra={"weights_identity": trainer.backbone.weights_identity},
        path=plan.out,
        staging=plan.out,
    )
    # The run now holds the kept weights as backbone + head: the training files are spent.
    for name in (CHECKPOINT, BEST):
        (plan.out / name).unlink(missing_ok=True)
    shutil.rmtree(plan.out / REFIT_DIR, ignore_errors=True)
    return run, result


def _check_unfinished(out: Path | None) -> None:
    if out is None or not (out / "run.json").exists():
        return
    try:
        load_run(out)
    except DataError:
        return  # an interrupted record: training resumes (or finishes) and writes it again
    raise StorageError(
        f"{out} already holds a finished run: a run is never overwritten; write to a new output "
        "directory"
    )


def finetune(
    data: str | Path | Dataset,
    config: FinetuneConfig,
    out: Path | None = None,
    runs_dir: Path = DEFAULT_RUNS_DIR,
    progress: EpochProgress | None = None,
    status: Callable[[Phase], None] | None = None,
) -> tuple[Run, FinetuneResult]:
    """Fine-tune on ``data`` (resuming from ``out``'s checkpoint); returns the run and result.

    ``progress`` is called after every batch; ``status`` when a step begins that its batches
    do not tell apart (``refitting``: the epochs after it train again on train + val)."""
    _check_unfinished(out)
    trainer = Trainer(make_plan(data, config, out, runs_dir))
    start = time.perf_counter()
    trainer.run(progress=progress)
    refitted = None
    if config.refit:
        (status or quiet)(Phase("refitting", "refit on train + val"))
        refitted = refit(trainer, progress)
    return finish(trainer, time.perf_counter() - start, refitted)
