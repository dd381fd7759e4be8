"""Steady-state CUDA extraction loop, timed by phase, for torch host threads × DataLoader workers.

Why ``featpipe.runtime.devices.host_threads`` exists: with torch's default intra-op thread pool
in the
main process, its threads spin on the cores the decoding workers need. Usage, on a GPU machine::

    python benchmarks/cuda_host_threads.py DATASET_DIR    # e.g. Fashion-MNIST, 1000 per class

Output of one run on the H100 machine (2026-11-24): ``benchmarks/results/cuda-host-threads.txt``.
"""

from __future__ import annotations

import sys
import time

import torch

from featpipe.backbones.build import BackboneSpec, build_backbone
from featpipe.data.datasets import scan
from featpipe.data.loader import make_loader
from featpipe.data.transforms import ImageToUint8
from featpipe.runtime.allocator import keep_freed_memory
from featpipe.runtime.engines import Normalized, TorchEngine


def main(root: str) -> None:
    keep_freed_memory()
    built = build_backbone(BackboneSpec("tf_efficientnet_lite0", "offline"))
    module = Normalized(built.module, built.data_config)
    engine = TorchEngine(module, torch.device("cuda"), "bf16", True)
    dataset = scan(root)
    paths = [str(dataset.root / i.relpath) for i in dataset.items]
    engine(torch.zeros(256, 3, 224, 224, dtype=torch.uint8))  # warm-up
    transform = ImageToUint8(built.data_config, True)
    for threads in (16, 2):
        torch.set_num_threads(threads)
        for workers in (8, 15):
            loader = make_loader(paths, transform, 256, workers, True)
            waiting = computing = 0.0
            count = 0
            start = mark = time.perf_counter()
            for batch in loader:
                got = time.perf_counter()
                waiting += got - mark
                engine(batch.images)
                mark = time.perf_counter()
                computing += mark - got
                count += len(batch.index)
            total = time.perf_counter() - start
            print(
                f"threads {threads} workers {workers}: {count / total:.0f} img/s, "
                f"waiting {waiting:.2f}s, engine {computing:.2f}s, total {total:.2f}s",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1])
