"""Where a network's converted forms live, and how a failed conversion is told.

ONNX Runtime and OpenVINO run a converted network: an ONNX file, an OpenVINO IR and OpenVINO's
compiled blobs, each made once per network under the cache directory. Converters fail on
operations they have no rule for, and say so in pages (OpenVINO opens with a source-file check,
torch's exporter dumps the whole graph); the user gets one line naming the model and the
failing operation. Torch-free, so the extract stage can name these paths before torch loads.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from featpipe.errors import ArgumentError


@dataclass(frozen=True)
class Conversions:
    """Where one network's converted forms live: made once per network (model, weights,
    transform, pool, layer), shared by every run, rank and precision on this machine."""

    model: str  # named when a conversion fails
    onnx: Path
    openvino: Path  # a folder: the IR (model.xml, model.bin) and OpenVINO's compiled blobs

    @classmethod
    def under(cls, cache_dir: Path, model: str, stem: str) -> Conversions:
        return cls(model, cache_dir / ".onnx" / f"{stem}.onnx", cache_dir / ".openvino" / stem)


class ConversionError(ArgumentError):
    """An engine cannot take this network: one line naming the model and the converter's
    reason, not its multi-page dump."""

    def __init__(self, engine: str, model: str, reason: str) -> None:
        self.engine, self.model, self.reason = engine, model, reason
        super().__init__("engine", f"{engine} cannot convert {model} ({reason}): use engine torch")


def _reason(exc: Exception) -> str:
    """The converter's own words, in one short line: OpenVINO's messages open with a
    source-file check and name the failing operations further down."""
    lines = [ln.strip(" -") for ln in str(exc).splitlines() if ln.strip(" -")]
    useful = [ln for ln in lines if not ln.startswith(("Check '", "FrontEnd API failed"))]
    named = [ln for ln in useful if "No conversion rule" in ln]
    return (named or useful or [type(exc).__name__])[-1][:200]


@contextlib.contextmanager
def converting(engine: str, model: str) -> Iterator[None]:
    """Turn any failure of a converter into a :class:`ConversionError`."""
    try:
        with warnings.catch_warnings():
            # Tracing warns about every Python-level branch it freezes; the forward is fixed.
            warnings.simplefilter("ignore")
            yield
    except Exception as exc:
        raise ConversionError(engine, model, _reason(exc)) from exc
