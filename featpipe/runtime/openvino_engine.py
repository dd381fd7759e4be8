"""OpenVINO: converting a network to its IR once, and running it (CPU).

Torch-free at import, like the loop that feeds it numpy batches, so that a warm extraction
whose IR is on disk runs without loading torch (:func:`featpipe.extraction.settle.
runs_without_torch`); only writing an IR imports torch, to trace the module.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from featpipe.runtime.conversions import Conversions, converting

if TYPE_CHECKING:
    import torch
    from torch import nn

    from featpipe.runtime.engines import Normalized

T = TypeVar("T")
Rows = np.ndarray | None  # an item's embeddings; None for an item without images
Images = Any  # a uint8 NCHW batch: a numpy array, or a CPU torch tensor (``np.asarray`` views it)


IR_NAME = "model.xml"  # and model.bin beside it


def write_openvino(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """OpenVINO IR (``path``: the .xml, a .bin beside it) of ``module`` traced on ``example``
    (``uint8``), with a dynamic batch axis. Weights stay float32: ``save_model`` would compress
    them to fp16 by default, which changes the numbers."""
    import openvino as ov
    import torch

    shape = (-1, *example.shape[1:])
    with torch.no_grad():
        # Traced here without torch's trace check, which reruns the network three times (half
        # of what converting Lite0 took); OpenVINO converts a traced graph as it would its own.
        # torch deprecates jit.trace for torch.export. Converting an ExportedProgram gave the
        # same IR outputs to the bit on Lite0, MobileNetV2 and ViT-S/16, but took 2.3-3.7x as
        # long (Lite0 29.3 s against 9.3 s, side by side, 2026-12-08), so tracing stays while
        # torch keeps it.
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
            write_openvino(module.cpu().eval(), module.example(), tmp / IR_NAME)
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


def cpu_threads() -> int:
    """The threads OpenVINO gets in a run without torch, where the torch path passes
    ``torch.get_num_threads()``: ``OMP_NUM_THREADS`` where set (torch honours it too), else the
    cores this process may run on. Both gave 2 on the 2-core machines these runs were measured
    on; where torch's default is the physical cores of an SMT machine the two can differ (not
    measured: whether the thread count moves OpenVINO's rows at rounding level, as engines and
    batch sizes may in fp32). Such runs have no loader workers, so every core computes."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    if hasattr(os, "sched_getaffinity"):  # Linux; elsewhere every core
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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

    def __call__(self, images: Images) -> np.ndarray:
        parts = np.array_split(np.asarray(images), max(1, min(len(self.requests), len(images))))
        return np.concatenate([rows for _, rows in self.map(enumerate(parts))])

    def map(self, items: Iterable[tuple[T, Images | None]]) -> Iterator[tuple[T, Rows]]:
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
                    request.start_async({0: np.ascontiguousarray(np.asarray(images))})
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
