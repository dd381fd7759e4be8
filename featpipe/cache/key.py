"""The cache key: a hash of everything that changes the numbers, and nothing that does not.

In the key: model, weights identity, transform fingerprint, pooling, layer, compute precision,
stored dtype and the format version. Not in the key: batch size, workers, memory format, device
index, the dataset. Those change speed, not meaning, or (for the dataset) are keyed per row by
path and file fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

FORMAT_VERSION = 1


@dataclass(frozen=True)
class KeyFields:
    model: str
    weights: str
    transform: dict[str, Any]
    pool: str
    layer: str | None
    precision: str
    dtype: str
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def entry_stem(model_slug: str, digest: str) -> str:
    """``<backbone>-<key8>``: readable in ``ls``, unique enough with the full key inside."""
    return f"{model_slug}-{digest[:8]}"
