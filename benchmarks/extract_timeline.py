"""When each step of one ``extract()`` begins, in seconds from the interpreter's start.

The whole-process figures of ``bench_engines.py`` time ``featpipe extract`` from outside; this
says where the seconds before the first batch go (importing featpipe, loading torch, reading
the cache and fingerprinting, building the backbone and its engine) and when the last row is
written, from the ``status`` and ``progress`` callbacks the CLI's progress bar uses.

Usage: ``python benchmarks/extract_timeline.py DATA --cache-dir DIR [--backbone B] [--weights W]``
(remove the entry first to time a computing run: a cache hit has no batches).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

START = time.perf_counter()  # as near the interpreter's start as a script gets

import featpipe  # noqa: E402  (timed: the import is part of what is measured)
from featpipe.progress import Phase, Progress  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default="offline")
    args = parser.parse_args()
    marks: list[tuple[float, str]] = [(time.perf_counter() - START, "featpipe imported")]

    def status(phase: Phase) -> None:
        marks.append((time.perf_counter() - START, phase.message))

    def progress(done: Progress) -> None:
        if not any(label == "first batch done" for _, label in marks):
            marks.append((time.perf_counter() - START, "first batch done"))

    result = featpipe.extract(
        args.data,
        args.backbone,
        weights=args.weights,
        cache_dir=args.cache_dir,
        status=status,
        progress=progress,
    )
    marks.append((time.perf_counter() - START, "extract() returned"))
    for seconds, label in marks:
        print(f"{seconds:7.2f} s  {label}")
    print(result.summary())


if __name__ == "__main__":
    main()
