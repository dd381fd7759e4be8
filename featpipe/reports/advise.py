"""``featpipe advise``: the course material's decision matrix, from measurements.

=========================  ================================  ==================================
quadrant                   strategy                          featpipe command
=========================  ================================  ==================================
small, similar             train the head only               ``featpipe fit``
large, similar             head first, then unfreeze the     ``featpipe finetune --from RUN
                           rest (low lr for early layers)    --gradual … --layer-decay …``
large, dissimilar          train from scratch (or keep the   ``featpipe finetune --weights none``
                           early blocks, re-init the last)
small, dissimilar          collect more data; meanwhile a    ``featpipe fit`` with strong
                           simple, strongly regularised head regularisation
=========================  ================================  ==================================

Evidence, all from cached features (the pretrained backbone and its random-init control):

* **size**: training images per class of the smallest class. Small below ``SMALL_PER_CLASS``
  (the course material's "< 1000 samples", counted per class because every class must be
  learned).
* **source-head confidence**: the backbone's own ImageNet classifier applied to the cached
  pooled features; the mean maximum softmax probability is the standard out-of-distribution
  score (Hendrycks & Gimpel, 2017). Images like ImageNet's get confident predictions.
* **transfer gain**: the linear-probe error that pretraining removes relative to the random
  control, ``(acc_pre − acc_rand) / (1 − acc_rand)``.
* also reported: the train/validation gap of the best head and the few-shot curve's slope.

Similar when the source head is confident (``SIMILAR_CONFIDENCE``) *and* pretraining removes a
large part of the error (``SIMILAR_GAIN``); dissimilar otherwise.

A fine-tune command carries the recipe of :mod:`featpipe.finetuning.recipe` for the number of
images it will train on (augmentation strength, epochs, learning rate, layer decay, EMA, TTA).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featpipe.backbones.build import BackboneSpec, load_classifier
from featpipe.cache.entry import Features
from featpipe.data.datasets import Dataset
from featpipe.data.splits import HOLDOUT
from featpipe.errors import DataError
from featpipe.extraction.options import ExtractOptions, as_extract_options
from featpipe.extraction.stage import scanned
from featpipe.finetuning.recipe import recipe
from featpipe.fitting.features import load_feature_set
from featpipe.fitting.sweep import few_shot, sweep
from featpipe.heads.config import HeadConfig, expand
from featpipe.options import declared, given
from featpipe.progress import Phase
from featpipe.runs.record import DEFAULT_RUNS_DIR

SMALL_PER_CLASS = 1000
SIMILAR_CONFIDENCE = 0.35
SIMILAR_GAIN = 0.35
# The probe advise's thresholds were measured with (standardised features, 30 epochs; README's
# "Is advise right?"), pinned here so that a change of the heads' defaults does not move them.
PROBE_GRID = {
    "head": ["linear"],
    "lr": [1e-3, 3e-3, 1e-2],
    "wd": [1e-4],
    "standardize": [True],
    "l2norm": [False],
}

STRATEGIES = {
    ("small", "similar"): "train the head only: the pretrained features already fit this data",
    ("large", "similar"): "head first, then unfreeze the rest with lower learning rates for the "
    "early blocks (gradual unfreezing, discriminative rates)",
    ("large", "dissimilar"): "train from scratch (or keep the early blocks and re-initialise "
    "the last ones): there is enough data to learn its own features",
    ("small", "dissimilar"): "collect more data; until then keep the backbone frozen and fit a "
    "simple, strongly regularised head",
}


@dataclass
class Advice:
    size: str
    similarity: str
    strategy: str
    command: str
    evidence: dict[str, Any] = field(default_factory=dict)


def decide(per_class_min: int, gain: float, confidence: float | None) -> tuple[str, str]:
    """The quadrant from the evidence (see the module docstring for the thresholds)."""
    size = "small" if per_class_min < SMALL_PER_CLASS else "large"
    similar = gain >= SIMILAR_GAIN and (confidence is None or confidence >= SIMILAR_CONFIDENCE)
    return size, "similar" if similar else "dissimilar"


def source_confidence(features: Features, backbone: str, weights: str) -> float | None:
    """Mean max-softmax of the backbone's ImageNet head on the cached pooled features."""
    meta = features.meta.get("key_fields", {})
    if meta.get("pool") != "avg" or meta.get("layer") is not None:
        return None
    model = load_classifier(BackboneSpec(backbone, weights)).model
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if classifier is None and hasattr(model, "classifier"):
        classifier = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Linear)][-1]
    if not isinstance(classifier, torch.nn.Linear) or classifier.in_features != features.X.shape[1]:
        return None
    with torch.no_grad():
        logits = classifier(torch.from_numpy(features.X))
        return float(torch.softmax(logits, dim=1).max(dim=1).values.mean())


def _probe(features: Features) -> tuple[float, dict[str, Any]]:
    result = sweep(features, expand(PROBE_GRID, HeadConfig(epochs=30)))
    history = result.best_head.history
    epoch = result.best_head.best_epoch
    train_acc = history["train_metric"][epoch] if history.get("train_metric") else float("nan")
    val_acc = result.best.mean("accuracy")
    return val_acc, {
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "train_val_gap": train_acc - val_acc,
        "config": result.best.config.label(),
    }


def advise(
    data: str | Path | Dataset,
    backbone: str = "tf_efficientnet_lite0",
    weights: str = "auto",
    extract_options: ExtractOptions | Mapping[str, Any] | None = None,
    status: Callable[[Phase], None] | None = None,
    progress: Callable[[str], Callable | None] | None = None,
    runs_dir: str | Path | None = None,
) -> Advice:
    """Measure ``data`` against ``backbone`` and name the quadrant and the next command.

    ``status`` hears every step before a batch runs (extraction's, then the measuring);
    ``progress(label)`` may return a per-batch callback for the extraction it names
    (``"pretrained"``, then ``"random-init control"``: on a slow machine the control alone can
    take many minutes). The next command keeps the extract options and ``runs_dir`` given here,
    so following it reuses this cache instead of extracting again at the defaults.

    ``data`` is a folder, a CSV manifest or a :class:`~featpipe.data.datasets.Dataset` already
    scanned from one; it is scanned once, for both extractions.
    """
    options = as_extract_options(extract_options)
    dataset = scanned(data, None, None, options, status or (lambda _phase: None))

    def features(label: str, spec: str) -> Features:  # both extractions read the one scan
        per_batch = (lambda _model: progress(label)) if progress else None
        loaded, _ = load_feature_set(dataset, spec, options, progress=per_batch, status=status)
        return loaded

    pretrained = features("pretrained", f"{backbone}@{weights}")
    if pretrained.task != "classification":
        raise DataError("advise needs a classification dataset (class folders or labels)")
    random_init = features("random-init control", f"{backbone}@none")
    if status:
        status(Phase("measuring", "measuring: linear probes, ImageNet confidence, few-shot"))
    train = pretrained.where("train")
    per_class = np.bincount(train.labels, minlength=len(train.class_names))
    acc_pre, probe_pre = _probe(pretrained)
    acc_rand, _ = _probe(random_init)
    gain = (acc_pre - acc_rand) / max(1e-9, 1 - acc_rand)
    confidence = source_confidence(pretrained, backbone, weights)
    shots = [s for s in (1, 5, 25) if s < per_class.min()] + ["all"]
    curve = few_shot(pretrained, HeadConfig(head="logreg"), shots, draws=3)
    size, similarity = decide(int(per_class.min()), gain, confidence)
    evidence = {
        "train_images": len(train),
        "images_per_class_min": int(per_class.min()),
        "images_per_class_median": float(np.median(per_class)),
        "linear_probe_pretrained": acc_pre,
        "linear_probe_random": acc_rand,
        "pretrained_minus_random": acc_pre - acc_rand,
        "transfer_gain": gain,
        "source_head_confidence": confidence,
        "best_head": probe_pre,
        "few_shot": [{"shots": p.shots, "accuracy": p.mean} for p in curve],
        "thresholds": {
            "small_per_class": SMALL_PER_CLASS,
            "similar_gain": SIMILAR_GAIN,
            "similar_confidence": SIMILAR_CONFIDENCE,
        },
    }
    context = CommandContext(
        str(dataset.source or dataset.root), backbone, replace(options, weights=weights), runs_dir
    )
    has_val = bool((pretrained.split == "val").any())
    tuned = fine_tune_images(len(train), has_val)
    return Advice(
        size,
        similarity,
        STRATEGIES[(size, similarity)],
        _command(size, similarity, context, has_val, tuned),
        evidence,
    )


def fine_tune_images(train_images: int, has_val: bool) -> int:
    """How many images a fine-tune trains on: train, less the share held out for validation
    when the data has no val split (fit's ``--holdout`` and fine-tuning's own rule)."""
    return train_images if has_val else round(train_images * (1 - HOLDOUT))


def _flags(fields: dict[str, Any]) -> str:
    """``{"lr_mult": [0.1, 1.0], "lr": 1e-4, "rot90": True}`` → ``--lr-mult 0.1,1.0 --lr 0.0001
    --rot90`` (FinetuneConfig fields as ``featpipe finetune`` flags)."""
    return " ".join(
        f"--{k.replace('_', '-')}"
        + ("" if v is True else " " + (",".join(map(str, v)) if isinstance(v, list) else str(v)))
        for k, v in fields.items()
    )


# The extract options that decide which cache entry (and which images) a command reads; a
# fine-tune reads images itself and takes only the last two.
KEY_OPTIONS = (
    "weights",
    "pool",
    "layer",
    "precision",
    "engine",
    "dtype",
    "draft",
    "decode",
    "cache_dir",
    "image_size",
    "crop_pct",
    "allow_outside",
)
FINETUNE_KEYS = ("image_size", "crop_pct", "allow_outside")


def _flag_list(options: ExtractOptions, keys: tuple[str, ...]) -> str:
    """Flags for the options among ``keys`` that differ from their defaults (switches as bare
    flags), spelled as the command line declares them, shell-quoted."""
    changed = given(options)
    flags: list[str] = []
    for o in declared(ExtractOptions):
        value = changed.get(o.name)
        if o.name not in keys or value is None or value is False:
            continue
        flags += [o.flag] if value is True else [o.flag, str(value)]
    return shlex.join(flags)


@dataclass(frozen=True)
class CommandContext:
    """What the printed commands keep of the advise call: the data, the backbone, the extract
    options that decide the cache entry (``featpipe.extract`` keyword arguments) and where runs
    go. Dropping them would make a user who follows the advice extract everything again at the
    default size into the default cache."""

    data: str
    backbone: str
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    runs_dir: str | Path | None = None

    def extract_flags(self) -> str:
        return _flag_list(self.extract, KEY_OPTIONS)

    def finetune_flags(self) -> str:
        return _flag_list(self.extract, FINETUNE_KEYS)

    def runs_flag(self) -> str:
        if self.runs_dir is None or Path(self.runs_dir) == Path(DEFAULT_RUNS_DIR):
            return ""
        return shlex.join(["--runs-dir", str(self.runs_dir)])


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _command(
    size: str, similarity: str, context: CommandContext, has_val: bool, train_images: int
) -> str:
    """The next command for a quadrant (the recipes ``benchmarks/bench_advise.py`` checks); a
    fine-tune's recipe is scaled to the ``train_images`` it will train on."""
    data = shlex.quote(context.data)
    runs = context.runs_flag()
    fit = _join(
        f"featpipe fit {data} --backbone {shlex.quote(context.backbone)}",
        context.extract_flags(),
        runs,
    )
    if (size, similarity) == ("small", "similar"):
        return f"{fit} --sweep head=linear,logreg lr=1e-3,1e-2 C=0.1,1"
    if (size, similarity) == ("large", "similar"):
        holdout = "" if has_val else " --holdout 0.15"
        return (
            f"{fit} --sweep head=linear,logreg lr=1e-3,1e-2 C=0.1,1{holdout}"
            "  # then, with the run it prints:\n"
            + _join(
                f"featpipe finetune {data} --from RUN {_flags(recipe(train_images))}",
                _flag_list(context.extract, ("allow_outside",)),  # the size comes with RUN
                runs,
            )
        )
    if (size, similarity) == ("large", "dissimilar"):
        # From scratch: the recipe's --weights none replaces the pretrained weights.
        return _join(
            f"featpipe finetune {data} --backbone {shlex.quote(context.backbone)}",
            context.finetune_flags(),
            _flags(recipe(train_images, pretrained=False)),
            runs,
        )
    return f"{fit} --sweep head=linear,logreg wd=1e-3,1e-2,1e-1 C=0.01,0.1,1 --shots 1,5,25,all"
