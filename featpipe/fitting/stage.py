"""The fit stage: features from the cache (extracting what is missing), a sweep, a saved run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featpipe.backbones.spec import label
from featpipe.cache.entry import FeatureSet
from featpipe.data.datasets import Dataset
from featpipe.data.splits import hold_out
from featpipe.errors import ArgumentError
from featpipe.extraction.options import ExtractOptions, as_extract_options
from featpipe.fitting.features import entry_records, load_feature_set, parse_feature_spec
from featpipe.fitting.options import SweepOptions
from featpipe.fitting.repeats import repeat
from featpipe.fitting.run import SweepResult, save_run
from featpipe.fitting.streaming import resolve_budget
from featpipe.fitting.sweep import sweep
from featpipe.fitting.views import train_views
from featpipe.heads.config import HeadConfig, expand, parse_grid
from featpipe.heads.placement import training_on
from featpipe.heads.views import check_view_mode
from featpipe.options import given
from featpipe.progress import Phase
from featpipe.runs.record import DEFAULT_RUNS_DIR, Run, load_run
from featpipe.runtime import distributed
from featpipe.runtime.devices import resolve_device

if TYPE_CHECKING:
    from featpipe.data.augment import Augment

# Without --head or --sweep: five linear heads at HeadConfig's defaults (L2-normalised
# features, AdamW at lr 0.1, cosine, epochs enough for 300 steps and at least 20), one per
# weight decay, trained together in one stacked pass; the chosen one is then refitted on
# train + val (sweep's refit). The weight decay is the regulariser that matters here
# (CLIP_benchmark's probe searches it too); at the old default's lr 1e-3..1e-2 with AdamW, wd
# 1e-4 and 1e-2 gave identical heads. 20 epochs, not 40: 1.15-2x less time, and on Lite0
# features (benchmarks/bench_probe.py, 3 seeds) test accuracy ELPV 0.857 (40 epochs: 0.859),
# Fashion-MNIST 0.859 (0.861), MNIST 0.960 (0.954): within a few test images.
DEFAULT_GRID: dict[str, list[Any]] = {"head": ["linear"], "wd": [0.0, 1e-2, 3e-2, 0.1, 0.3]}


def with_holdout(features: FeatureSet, fraction: float) -> FeatureSet:
    """Mark a stratified ``fraction`` of the train rows as val (the fine-tune stage's rule)."""
    train = np.flatnonzero(features.split == "train")
    strata = features.labels[train] if features.task == "classification" else [0] * len(train)
    held = hold_out(list(features.relpath[train]), list(strata), fraction)
    split = features.split.copy()
    split[train[np.array(held, dtype=bool)]] = "val"
    return replace(features, split=split)


def fit(
    data: str | Path | Dataset,
    backbone: str = "tf_efficientnet_lite0",
    options: SweepOptions | None = None,
    *,
    grid: dict[str, list[Any]] | None = None,
    head: dict[str, Any] | None = None,
    extract_options: ExtractOptions | Mapping[str, Any] | None = None,
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    progress: Callable[[str], Callable | None] | None = None,
    status: Callable[[Phase], None] | None = None,
    views: int = 0,
    view_mode: str = "random",
    augment: Augment | None = None,
    device: str = "auto",
    **overrides: Any,
) -> tuple[Run, SweepResult]:
    """Fit heads on the cached features of ``data`` under ``backbone`` and save the run.

    ``data`` is a dataset path or a scanned :class:`~featpipe.data.datasets.Dataset` (a caller
    fitting several backbones on one dataset scans it once).
    ``grid`` maps head options to lists of values (every combination is fitted); ``head``
    gives fixed options. With neither, :data:`DEFAULT_GRID` is used. ``options`` are the
    :class:`~featpipe.fitting.options.SweepOptions` (seeds, cv, holdout, shots, draws, refit,
    memory_budget, n_jobs); any of them may also be given as a keyword (``fit(data, seeds=3)``),
    on top of ``options``. ``holdout`` turns a stratified share of train into the val split
    when the data has none (else CV selects). ``extract_options`` are the
    :class:`~featpipe.extraction.options.ExtractOptions` of the features (or their fields as a
    mapping), extracted first where missing. ``status`` hears every step before a batch runs
    (see :class:`Phase`), fitting included. ``memory_budget`` (bytes, or a size such as
    ``"512M"``; default: half the memory available): train features larger than this are
    streamed from the cache in chunks instead of loaded (:mod:`featpipe.fitting.streaming`).
    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) is where the torch heads train
    (:mod:`featpipe.heads.placement`; scikit-learn heads stay on the CPU), and where
    extraction runs unless ``extract_options`` names another; the run records it.

    ``views``: train on K cached augmented views of every training image (extracted first if
    missing, under ``augment``); ``view_mode`` ``random`` draws one view per image per epoch,
    ``all`` trains on all K every epoch (scikit-learn heads take every view as a row).
    Selection and test stay on the eval features; the run records the views it used.

    ``refit``: after selection on a val split, the chosen config is fitted again on train + val,
    and that head is scored on test and saved (:func:`~featpipe.fitting.sweep.sweep`); the run
    records what its head was trained on, and keeps the train-only head for fine-tuning.
    """
    options = replace(options or SweepOptions(), **overrides)  # checked before any work
    heads_device = resolve_device(device)  # a bad --device fails before any work
    extraction = as_extract_options(extract_options)
    if extraction.device == "auto":
        extraction = replace(extraction, device=device)
    grid = parse_grid(grid or ({} if head else DEFAULT_GRID), "grid")
    fixed = HeadConfig.from_dict(head or {}, param="head")
    configs = expand(grid, fixed)
    specs = parse_feature_spec(backbone, extraction)
    if views:
        check_view_mode(view_mode)
        if len(specs) > 1:
            raise ArgumentError(
                "views", f"train on one backbone's views, not a concatenation ({backbone})"
            )
    features, results = load_feature_set(
        data,
        specs,
        extraction,
        progress,
        status,
        resolve_budget(options.memory_budget),
        views=views,
        augment=augment,
    )
    if options.holdout and not (features.split == "val").any():
        features = with_holdout(features, options.holdout)
    used, view_record = None, None
    if views:
        if not features.in_memory:
            raise ArgumentError(
                "views",
                "need the features in memory: the train features exceed memory_budget; "
                "raise it to train on views",
            )
        assert results[0].views is not None  # extract(views=K) made them
        used, view_record = train_views(features, results[0].views, view_mode)
    if options.repeats > 1 and views:
        raise ArgumentError(
            "repeats", "cannot re-draw the splits of augmented views (they follow train's rows)"
        )
    if status:
        splits = f" × {options.repeats} splits" if options.repeats > 1 else ""
        status(
            Phase(
                "fitting",
                f"fitting {len(configs)} head configs × {options.seeds} seeds{splits}",
            )
        )
    common = {"seeds": options.seeds, "cv": options.cv, "n_jobs": options.n_jobs}
    with training_on(heads_device):
        result = sweep(
            features,
            configs,
            shots=list(options.shots) if options.shots else None,
            draws=options.draws,
            views=used,
            refit=options.refit,
            **common,
        )
        if options.repeats > 1:
            result.repeats = repeat(
                result, features, configs, options.repeats, refit=options.refit, **common
            )
    entries, extract_seconds = entry_records(specs, results)

    def save() -> Run:
        return save_run(
            Path(runs_dir),
            result,
            dataset=results[0].dataset,
            dataset_root=str(features.meta.get("dataset_root", data)),
            spec=label(specs),
            entries=entries,
            request={
                "grid": grid,  # typed, as parsed
                "head": {name: getattr(fixed, name) for name in head or {}},
                "seeds": options.seeds,
                "cv": options.cv,
                "holdout": options.holdout,
                "shots": list(options.shots) if options.shots else None,
                "draws": options.draws,
                "repeats": options.repeats,
                "extract": {
                    k: str(v)
                    for k, v in ({"device": extraction.device} | given(extraction)).items()
                },
                "configs": [c.to_dict() for c in configs],
                "views": view_record,
                "heads_device": str(heads_device),
                "refit": options.refit,
            },
            extract_seconds=extract_seconds,
        )

    # Under torchrun every rank fitted its share of the grid; rank 0 writes the one run.
    run = load_run(distributed.on_leader(distributed.current(), lambda: save().path))
    return run, result
