"""featpipe: run a frozen vision backbone once, cache its pooled embeddings, fit heads in seconds.

The main entry point of every stage, in the order of the flow::

    data       scan, prepare_dataset
    backbones  BackboneSpec, build_backbone, list_backbones, load_classifier
    extract    extract(data, backbone, ExtractOptions) → ExtractResult; extract_layers (several
               layers of one backbone from one forward pass, an entry each)
    cache      load_features, iter_chunks → Features; load_views, iter_views (N × K × D)
    augment    Augment (the recipe of extract(views=K))
    heads      Head (a scikit-learn estimator)
    fit        fit (a sweep of heads, saved as a run); retrieve (recall@k, mAP@R, no head)
    finetune   finetune
    runs       load_run → Run (what it measured: RunMetrics)
    reports    report, compare, advise
    use        predict, export
    errors     FeatpipeError and the builtin-shaped ArgumentError, DataError, StorageError,
               MissingError

The names are imported lazily, so that ``import featpipe`` and a cache hit stay fast (torch and
timm take seconds to import and are only loaded when a model must run).
"""

from __future__ import annotations

import importlib
from typing import Any

from featpipe.errors import ArgumentError, DataError, FeatpipeError, MissingError, StorageError

__version__ = "0.1.0"

# name → module that defines it (imported on first use)
_API = {
    "scan": "featpipe.data.datasets",
    "prepare_dataset": "featpipe.data.bundled",
    "BackboneSpec": "featpipe.backbones.spec",
    "build_backbone": "featpipe.backbones.build",
    "list_backbones": "featpipe.backbones.build",
    "load_classifier": "featpipe.backbones.build",
    "extract": "featpipe.extraction.stage",
    "extract_layers": "featpipe.extraction.layers",
    "ExtractOptions": "featpipe.extraction.options",
    "ExtractResult": "featpipe.extraction.stage",
    "load_features": "featpipe.cache.entry",
    "iter_chunks": "featpipe.cache.entry",
    "load_views": "featpipe.cache.views",
    "iter_views": "featpipe.cache.views",
    "Augment": "featpipe.data.augment",
    "Features": "featpipe.cache.entry",
    "Head": "featpipe.heads.estimator",
    "fit": "featpipe.fitting.stage",
    "retrieve": "featpipe.fitting.retrieval",
    "RetrievalOptions": "featpipe.fitting.options",
    "finetune": "featpipe.finetuning.stage",
    "load_run": "featpipe.runs.record",
    "Run": "featpipe.runs.record",
    "RunMetrics": "featpipe.runs.metrics",
    "report": "featpipe.reports.report",
    "compare": "featpipe.reports.compare",
    "advise": "featpipe.reports.advise",
    "predict": "featpipe.use.predict",
    "export": "featpipe.use.export",
}
__all__ = [
    "__version__",
    *_API,
    "FeatpipeError",
    "ArgumentError",
    "DataError",
    "StorageError",
    "MissingError",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module 'featpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API, for ``dir(featpipe)`` and tab completion (the lazy names included)."""
    return sorted(__all__)
