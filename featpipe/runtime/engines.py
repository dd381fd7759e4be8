"""Run the frozen embedder: PyTorch eager (CPU or CUDA with autocast), ONNX Runtime or OpenVINO
(both CPU).

Every engine takes the loader's ``uint8`` batch and returns float32 embeddings; normalisation is
part of the model they run (one fused multiply-add), so no float copy of the batch is made on
the host. On the 2-core AMD CPUs this project is built on, ONNX Runtime ran EfficientNet-Lite0
1.5–1.7× faster than PyTorch with channels_last, and OpenVINO (fp32) 1.9× faster; on other CPUs
they may not, so the speed probe (:mod:`featpipe.runtime.tuning`) times them and keeps the
fastest. In fp32 the engine, like batch size and memory format, changes results only at
float-rounding level (about 1e-5) and is recorded in the provenance, not in the cache key; a
reduced precision is each engine's own arithmetic (see :mod:`featpipe.cache.key`).

The converted forms of a network (an ONNX file, an OpenVINO IR and OpenVINO's compiled blobs)
are kept under the cache directory, written once and atomically, so a rerun converts nothing.
OpenVINO's engine lives in :mod:`featpipe.runtime.openvino_engine`, which imports no torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from featpipe.data.transforms import Normalize
from featpipe.runtime.conversions import Conversions, converting
from featpipe.runtime.devices import autocast
from featpipe.runtime.openvino_engine import Rows

T = TypeVar("T")


class Engine(Protocol):
    name: str

    def __call__(self, images: torch.Tensor) -> np.ndarray: ...

    def map(self, items: Iterable[tuple[T, torch.Tensor | None]]) -> Iterator[tuple[T, Rows]]:
        """``(tag, images)`` → ``(tag, rows)`` in order; ``None`` images give ``None`` rows.
        An engine with several infer requests computes the next items meanwhile."""
        ...


class OneBatchAtATime:
    """An engine that computes a batch when called: :meth:`Engine.map` is a loop over calls."""

    def map(self, items: Iterable[tuple[T, torch.Tensor | None]]) -> Iterator[tuple[T, Rows]]:
        for tag, images in items:
            yield tag, None if images is None else self(images)  # type: ignore[operator]


class Normalized(nn.Module):
    """``uint8`` images in, embeddings out: the exact module both engines run."""

    def __init__(self, embedder: nn.Module, data_config: dict) -> None:
        super().__init__()
        self.normalize = Normalize(data_config["mean"], data_config["std"])
        self.embedder = embedder
        self.input_size: tuple[int, int] = tuple(data_config["input_size"][1:])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedder(self.normalize(images))

    def example(self) -> torch.Tensor:
        """The input a converter traces: two images, so that no size-1 axis is taken as
        fixed."""
        return torch.zeros(2, 3, *self.input_size, dtype=torch.uint8)


class TorchEngine(OneBatchAtATime):
    name = "torch"

    def __init__(
        self, module: Normalized, device: torch.device, precision: str, channels_last: bool
    ) -> None:
        self.module = module.to(device).eval()
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.device, self.precision, self.channels_last = device, precision, channels_last

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        x = images.to(self.device, non_blocking=True)
        # Batches may come channels-last (featpipe.data.loader.stack): kept so where the module
        # is, made NCHW where it is not.
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.module(x).float().cpu().numpy()


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, output: str) -> None:
    """ONNX with a dynamic batch axis; input ``images``, one output named ``output``."""
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of torch.export (which needs
        # the extra onnxscript package); it still works in the torch we pin.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["images"],
            output_names=[output],
            dynamic_axes={"images": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def export_onnx(module: Normalized, files: Conversions) -> Path:
    """Export once per backbone (dynamic batch), atomically: tmp name, then rename."""
    path = files.onnx
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with converting("onnxruntime", files.model):
            write_onnx(module.cpu().eval(), module.example(), tmp, "embeddings")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class OnnxEngine(OneBatchAtATime):
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int, spin: bool) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spinning threads would steal the cores that decoding workers need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"images": np.ascontiguousarray(images.numpy())})[0]
