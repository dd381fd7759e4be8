"""The cache key: a hash of everything that changes the numbers, and nothing that does not.

In the key: model, weights identity, transform fingerprint, pooling, layer, compute precision,
stored dtype and the format version. Not in the key: batch size, workers, memory format, device
index, the dataset. Those change speed, not meaning, or (for the dataset) are keyed per row by
path and file fingerprint.

The engine is in the key only where it changes the arithmetic. In fp32, torch, ONNX Runtime and
OpenVINO compute the same function up to float rounding (a cosine of 0.9999999 to torch on
Lite0), as two batch sizes do, so an fp32 entry made by one engine is a cache hit for the
others. A reduced precision is each engine's own arithmetic: torch's bf16 autocast runs op by
op and keeps some ops in fp32, OpenVINO's bf16 runs its own fused graph. Both land about 1e-4
from fp32 (a cosine of 0.99993 and 0.99994 on this project's CPU with AVX512-BF16) by different
roundings, so nothing makes them agree more closely with each other. Their rows must not be
mixed in one entry, nor a head fitted on one be applied to the other, so a reduced-precision key
names its engine, except torch's: torch's autocast is what a reduced-precision key meant before
other engines could compute one, and its entries keep the keys they have.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
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
    engine: str = ""  # "" for fp32 on any engine and torch at any precision (see above)

    def to_json(self) -> str:
        fields = asdict(self)
        if not self.engine:  # so every key made before engines entered it stays the same
            del fields["engine"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    def computed(self, precision: str, engine: str) -> KeyFields:
        """These fields for rows computed in ``precision`` by ``engine``."""
        named = "" if precision == "fp32" or engine == "torch" else engine
        return replace(self, precision=precision, engine=named)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def entry_stem(model_slug: str, digest: str) -> str:
    """``<backbone>-<key8>``: readable in ``ls``, unique enough with the full key inside."""
    return f"{model_slug}-{digest[:8]}"
