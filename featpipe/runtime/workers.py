"""How a loop over images decodes: how many processes it starts (extraction and fine-tuning),
and whether a thread decodes ahead (extraction)."""

from __future__ import annotations

import os


def default_workers(n_items: int, batch_size: int, world: int = 1, gpu: bool = False) -> int:
    """Decoding processes that help rather than compete with the forward pass.

    With a GPU, decoding is the limit: every core but one decodes (on a 16-core H100 machine,
    15 workers decoded 6,900 img/s against 5,900 for 8). On a CPU the forward's threads use
    every core, and a worker only pays where cores are many: on 2 cores, decoding in the main
    process between batches ran Lite0 on ELPV at 139–147 img/s against 124–131 with one worker
    (bf16, batch 8, measured alternately in one process); with OpenVINO a thread then decodes
    one batch ahead (:func:`decode_ahead`). Under torchrun the cores are
    shared by ``world`` ranks.
    """
    cores = max(1, (os.cpu_count() or 2) // world)
    if n_items <= 2 * batch_size or cores <= 2:
        return 0
    return min(32, cores - 1) if gpu else min(8, max(1, cores // 4))


# Batches decoded ahead in a thread when there are no loader workers and OpenVINO runs the
# forward (bench_engines.py --parts shares, ELPV, Lite0 fp32, batch 8, 2 cores, 3 alternated
# runs each: 125-130 img/s against 105-109 decoding between batches and 118-120 with one
# worker process). Not with torch: its forward threads and the decoding thread then ran 61-67
# img/s against 73-76 between batches (a later run: 74-78 against 71-76, a tie; the rule is not
# changed on one run). ONNX Runtime was not measured.
PREFETCH = 2


def decode_ahead(workers: int, engine: str) -> int:
    """Batches a thread decodes ahead of the forward (:func:`featpipe.data.loader.prefetched`):
    :data:`PREFETCH` without loader workers under OpenVINO, else 0."""
    return PREFETCH if workers == 0 and engine == "openvino" else 0
