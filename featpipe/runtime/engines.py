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
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from featpipe.data.transforms import Normalize
from featpipe.runtime.conversions import Conversions, converting
from featpipe.runtime.devices import autocast

T = TypeVar("T")
Rows = np.ndarray | None  # an item's embeddings; None for an item without images


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
            write_onnx(module.cpu().eval(), _example(module.input_size), tmp, "embeddings")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _example(size: tuple[int, int]) -> torch.Tensor:
    """The input a converter traces: two images, so that no size-1 axis is taken as fixed."""
    return torch.zeros(2, 3, *size, dtype=torch.uint8)


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


IR_NAME = "model.xml"  # and model.bin beside it


def write_openvino(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """OpenVINO IR (``path``: the .xml, a .bin beside it) of ``module`` traced on ``example``
    (``uint8``), with a dynamic batch axis. Weights stay float32: ``save_model`` would compress
    them to fp16 by default, which changes the numbers."""
    import openvino as ov

    shape = (-1, *example.shape[1:])
    with torch.no_grad():
        # Traced here without torch's trace check, which reruns the network three times (half
        # of what converting Lite0 took); OpenVINO converts a traced graph as it would its own.
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
        model = ov.convert_model(traced, example_input=example, input=[(shape, ov.Type.u8)])
    ov.save_model(model, str(path), compress_to_fp16=False)


def export_openvino(module: Normalized, files: Conversions) -> Path:
    """Convert once per backbone; the IR folder appears whole or not at all (written under a
    temporary name, then renamed), so concurrent ranks never read half an IR."""
    path = files.openvino / IR_NAME
    if path.is_file():
        return path
    files.openvino.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.openvino.with_name(files.openvino.name + f".tmp-{os.getpid()}")
    try:
        tmp.mkdir()
        with converting("openvino", files.model):
            write_openvino(module.cpu().eval(), _example(module.input_size), tmp / IR_NAME)
        try:
            tmp.rename(files.openvino)
        except OSError:
            if not path.is_file():  # else another process renamed its identical IR first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# OpenVINO's name for each precision. Its default on a CPU with bf16 units is bf16, not fp32:
# exact fp32 has to be asked for.
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


@functools.cache
def openvino_core() -> Any:
    """The process's one OpenVINO ``Core``, never released.

    OpenVINO 2026.4's CPU plugin points the compiling thread's alternate signal stack at memory
    of its own and puts the previous pointer back when its ``Core`` goes. With Cores released
    out of order the pointer is left at unmapped memory, and the next Python signal handler
    (CPython installs them on that stack; DataLoader has one for SIGCHLD) ends the process with
    SIGSEGV: the full test suite died so. One Core that lives as long as the process never
    puts a stale pointer back.
    """
    import openvino as ov

    return ov.Core()


def openvino_has_bf16() -> bool:
    """Whether OpenVINO can compute bf16 on this CPU (AVX512-BF16 or AMX); without, it would
    quietly run fp32 under a bf16 hint."""
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoEngine:
    """One compiled model with ``PERFORMANCE_HINT=THROUGHPUT``: several streams (two on 2
    cores, one thread each), one infer request per stream.

    :meth:`map` gives each request a whole batch of its own, so the next batches run while this
    one does; a single call (``predict``'s) splits its batch across the requests instead, so
    that every stream works on it. The rows do not depend on the split or the batch size (a
    test checks it bit for bit), nor on the hint (``LATENCY`` gave the same bits below).

    The hint was chosen by measurement in the extraction loop, where a thread decodes the next
    batch meanwhile: ELPV, Lite0, batch 8, 2 cores, 9 alternated pairs, ``THROUGHPUT`` with 2, 3
    or 4 requests 131-139 img/s against ``LATENCY`` (one stream running each batch on both
    threads) 126-130, faster in all nine (``benchmarks/bench_engines.py --parts shares`` runs
    the loop with both). Forward only, with nothing
    decoding beside it, the two were within noise (README, "CPU engines"). Why, not measured:
    a decoding thread that takes a core from one of ``LATENCY``'s two threads holds up both at
    the next layer, and only one of two streams.
    Compiled blobs go to ``CACHE_DIR`` beside the IR, so a rerun compiles from the blob.
    """

    name = "openvino"

    def __init__(self, files: Conversions, precision: str, threads: int) -> None:
        config = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": threads,
            "CACHE_DIR": str(files.openvino / "compiled"),
        }
        compiled = openvino_core().compile_model(str(files.openvino / IR_NAME), "CPU", config)
        count = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.requests = [compiled.create_infer_request() for _ in range(count)]

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        parts = torch.tensor_split(images, max(1, min(len(self.requests), len(images))))
        return np.concatenate([rows for _, rows in self.map(enumerate(parts))])

    def map(self, items: Iterable[tuple[T, torch.Tensor | None]]) -> Iterator[tuple[T, Rows]]:
        """Each item's rows, in order, with up to one batch per request in flight: the
        requests take turns, and a request's rows are collected before it takes the next."""
        turns = itertools.cycle(self.requests)
        waiting: collections.deque[tuple[T, Any]] = collections.deque()
        try:
            for tag, images in items:
                request = None
                if images is not None:
                    request = next(turns)
                    while any(r is request for _, r in waiting):  # still holds earlier rows
                        yield _collected(*waiting.popleft())
                    # Copied in: a shared input would leave the request pointing at a freed
                    # batch. The network takes NCHW: numpy makes a channels-last batch so in a
                    # tenth of the time torch's strided copy takes.
                    request.start_async({0: np.ascontiguousarray(images.numpy())})
                waiting.append((tag, request))
            while waiting:
                yield _collected(*waiting.popleft())
        finally:  # a consumer that stopped early leaves no request running
            for _, request in waiting:
                if request is not None:
                    request.wait()


def _collected(tag: T, request: Any) -> tuple[T, Rows]:
    """``tag`` with its request's rows (copied out: the request's output is overwritten by
    its next batch), or ``None`` for an item without images."""
    if request is None:
        return tag, None
    request.wait()
    return tag, request.get_output_tensor(0).data.copy()
