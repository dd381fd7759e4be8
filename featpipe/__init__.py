"""featpipe: run a frozen vision backbone once, cache its pooled embeddings, fit heads in seconds.

The top-level names are imported lazily, so that ``import featpipe`` and a cache hit stay fast
(torch and timm take seconds to import and are only loaded when a model must run).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "extract": "featpipe.extraction.stage",
    "ExtractResult": "featpipe.extraction.stage",
    "load_features": "featpipe.cache.entry",
    "iter_chunks": "featpipe.cache.entry",
    "Features": "featpipe.cache.entry",
    "scan": "featpipe.data.datasets",
    "BackboneSpec": "featpipe.backbones.spec",
    "build_backbone": "featpipe.backbones.build",
    "load_classifier": "featpipe.backbones.build",
    "list_backbones": "featpipe.backbones.build",
    "prepare_dataset": "featpipe.data.bundled",
    "FeatpipeError": "featpipe.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'featpipe' has no attribute {name!r}")
