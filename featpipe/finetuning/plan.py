"""What a fine-tune run will do, decided once before any training: the run it starts from, the
backbone, the splits, the device, the precision and the decoding workers.

Everything a resume must reproduce is resolved here and recorded in the config (the backbone a
``from_run`` names, the worker count that the augmentation streams depend on), so the trainer
receives settled facts instead of options to interpret.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from featpipe.backbones.build import BackboneSpec
from featpipe.data.datasets import Dataset, Item, scan
from featpipe.data.soft_labels import SoftLabels, read_soft_labels
from featpipe.data.splits import HOLDOUT, hold_out
from featpipe.errors import ArgumentError, DataError
from featpipe.finetuning.config import DEFAULT_BACKBONE, FinetuneConfig
from featpipe.heads import metrics
from featpipe.runs.record import DEFAULT_RUNS_DIR, load_run, new_run_path
from featpipe.runtime.devices import check_precision, resolve_device
from featpipe.runtime.workers import default_workers

if TYPE_CHECKING:
    from featpipe.heads.fitted import FittedHead


@dataclass(frozen=True)
class StartRun:
    """The fit run LP-FT starts from, read through the runs reader: its head as selection
    fitted it on train (``head``) and the run's own head (``refit_head``: fitted again on train
    + val where the fit refitted it, which a fine-tune's ``--refit`` starts from), the backbone
    its features came from (with the weights' identity, which must still match), the precision
    they were cached at, and the share of train it held out (None: the data's own val split)."""

    path: Path
    head: FittedHead
    refit_head: FittedHead
    spec: BackboneSpec
    weights_identity: str
    precision: str
    holdout: float | None


def read_start(path: str | Path) -> StartRun:
    run = load_run(path)
    entries = run.config["entries"]
    if len(entries) != 1:
        raise ArgumentError("from_run", f"{path}: LP-FT needs a single-backbone run")
    if run.metrics.selection != "val":
        raise ArgumentError(
            "from_run",
            f"{path}: that head was fitted on every training image (chosen by "
            f"{run.metrics.selection}), so fine-tuning would choose epochs on images the head "
            "has seen; fit it again with a hold-out (fit's holdout, e.g. 0.15) or give the data "
            "a val split",
        )
    entry = entries[0]
    fields = entry["key_fields"]
    spec = BackboneSpec.from_key_fields(entry["model"], entry["weights"], fields)
    holdout = float(run.config.get("request", {}).get("holdout") or 0.0)
    return StartRun(
        run.path,
        run.selection_head(),  # never trained on val, where fine-tuning chooses its epochs
        run.head(),
        spec,
        fields["weights"],
        fields["precision"],
        holdout or None,
    )


@dataclass
class Plan:
    """A fine-tune run, fully decided."""

    config: FinetuneConfig  # resolved: backbone, weights, image size and workers filled in
    dataset: Dataset
    train: list[Item]
    val: list[Item]
    test: list[Item]
    holdout: float | None  # share of train held out as val; None: the data's val split
    device: torch.device
    precision: str
    out: Path
    start: StartRun | None
    # the epochs of the schedule to train: all of them (``config.epochs``), or for the refit on
    # train + val the number the run chose on val (:mod:`featpipe.finetuning.refit`)
    epochs: int
    soft_labels: SoftLabels | None = None  # training targets where listed (``--soft-labels``)

    @property
    def selects(self) -> bool:
        """Whether the run chooses its epoch and weights on val (not a refit, which has none)."""
        return bool(self.val)

    @property
    def metric(self) -> str:
        return metrics.primary(self.dataset.task)

    @property
    def n_outputs(self) -> int:
        classes = self.dataset.class_names
        return len(classes) if self.dataset.task == "classification" else 1


def _resolve_backbone(config: FinetuneConfig, start: StartRun | None) -> FinetuneConfig:
    """With a ``from_run`` the run names the backbone (model, weights, input size, crop), so
    the run directory and the results table record the network that was actually trained."""
    if start is None:
        return replace(config, backbone=config.backbone or DEFAULT_BACKBONE)
    spec = start.spec
    if config.backbone not in (None, spec.model):
        raise ArgumentError(
            "backbone",
            f"{config.backbone}: run {start.path} was fitted on {spec.model}; leave the backbone "
            "out when starting from a run",
        )
    if config.image_size not in (None, spec.image_size):
        raise ArgumentError(
            "image_size",
            f"{config.image_size}: run {start.path} was fitted at {spec.image_size} px; leave "
            "the image size out when starting from a run",
        )
    if config.crop_pct not in (None, spec.crop_pct):
        raise ArgumentError(
            "crop_pct",
            f"{config.crop_pct}: run {start.path} was fitted with crop_pct {spec.crop_pct}; "
            "leave the crop out when starting from a run",
        )
    return replace(
        config,
        backbone=spec.model,
        weights=spec.weights,
        image_size=spec.image_size,
        crop_pct=spec.crop_pct,
    )


def _split(
    dataset: Dataset, start: StartRun | None
) -> tuple[list[Item], list[Item], list[Item], float | None]:
    """Train, val and test items, and the share of train held out as val (None: the data's).

    The best epoch is chosen on validation data, never on test. Without a val split, a
    deterministic stratified share of train is held out: the share the ``from_run`` held out
    (so LP-FT validates on exactly the images its head never saw), else 15%.
    """
    train = [i for i in dataset.items if i.split == "train"]
    val = [i for i in dataset.items if i.split == "val"]
    test = [i for i in dataset.items if i.split == "test"]
    fraction = None
    if not val:
        if start is not None and start.holdout is None:
            raise ArgumentError(
                "from_run",
                f"{start.path}: its head was chosen on a val split that {dataset.root} no "
                "longer has; fit it again on this data with a hold-out",
            )
        fraction = start.holdout if start is not None and start.holdout else HOLDOUT
        classification = dataset.task == "classification"
        # The fit stage's rule: strata are the labels, or one stratum for a regression.
        held = hold_out(
            [i.relpath for i in train], [i.label if classification else 0 for i in train], fraction
        )
        val = [i for i, h in zip(train, held, strict=True) if h]
        train = [i for i, h in zip(train, held, strict=True) if not h]
    if len(train) < 2 or not val:
        raise DataError(
            f"{dataset.root}: fine-tuning needs training images and a validation split to "
            "choose the best epoch on"
        )
    return train, val, test, fraction


def _soft_labels(config: FinetuneConfig, dataset: Dataset, train: list[Item]) -> SoftLabels | None:
    """The ``--soft-labels`` file, read and checked; it must still be the file the run was
    planned with (``soft_labels_sha256``, set on a resume) and label some training image."""
    if config.soft_labels is None:
        return None
    soft = read_soft_labels(config.soft_labels, dataset)
    if config.soft_labels_sha256 not in (None, soft.sha256):
        raise ArgumentError(
            "soft_labels",
            f"{config.soft_labels}: the file changed since the run was planned (SHA-256 "
            f"{soft.sha256[:12]}…, recorded {config.soft_labels_sha256[:12]}…); restore it, or "
            "start a new run",
        )
    if not soft.covered(train):
        raise ArgumentError(
            "soft_labels",
            f"{config.soft_labels}: none of the {len(train)} training images is listed; list "
            "training images (val and test are scored on the hard labels)",
        )
    return soft


def _precision(config: FinetuneConfig, device: torch.device, start: StartRun | None) -> str:
    check_precision(device, config.precision)
    if config.precision != "auto":
        return config.precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return start.precision if start else "fp32"


def make_plan(
    data: str | Path | Dataset,
    config: FinetuneConfig,
    out: Path | None = None,
    runs_dir: Path = DEFAULT_RUNS_DIR,
) -> Plan:
    """Decide the run: read the ``from_run``, scan the data, split it, pick device and precision.

    Without ``out`` the run gets a new directory under ``runs_dir``, named after the dataset
    and the (resolved) backbone.
    """
    start = read_start(config.from_run) if config.from_run else None
    config = _resolve_backbone(config, start)
    dataset = data if isinstance(data, Dataset) else scan(data)
    if dataset.task == "none":
        raise DataError(f"{dataset.root}: fine-tuning needs labels")
    if (config.mixes or config.smoothing) and dataset.task != "classification":
        param = "mixup" if config.mixup else "cutmix" if config.cutmix else "smoothing"
        what = "smoothing softens" if param == "smoothing" else "mixing blends"
        raise ArgumentError(
            param,
            f"{getattr(config, param)}: {what} class labels, and {dataset.root} is a "
            "regression; leave it off",
        )
    if start is not None and start.head.class_names != dataset.class_names:
        raise ArgumentError(
            "from_run",
            f"{start.path}: the run's classes {start.head.class_names} differ from the "
            f"dataset's {dataset.class_names}",
        )
    train, val, test, fraction = _split(dataset, start)
    soft = _soft_labels(config, dataset, train)
    if soft is not None:
        config = replace(config, soft_labels_sha256=soft.sha256)
    device = resolve_device(config.device)
    if config.workers is None:
        # Resolved once and stored with the run: augmentation streams depend on it.
        workers = default_workers(len(train), config.batch_size, gpu=device.type == "cuda")
        config = replace(config, workers=workers)
    return Plan(
        config=config,
        dataset=dataset,
        train=train,
        val=val,
        test=test,
        holdout=fraction,
        device=device,
        precision=_precision(config, device, start),
        out=out or new_run_path(runs_dir, dataset.name, str(config.backbone), "finetune"),
        start=start,
        epochs=config.epochs,
        soft_labels=soft,
    )
