"""What the cache's integrity checks cost on a cache hit: content fingerprints and checksums.

On a real image folder (default ``data/elpv``: ``featpipe datasets prepare elpv data/elpv``), one
entry is built with a tiny random-weight model (the model does not matter here: no row is
computed during the timings). Then, best of ``--repeat``, in seconds:

* the whole cache hit (``featpipe.extract``, library), and the dataset scan alone (``stat``);
* the quick fingerprints of every file (first and last 64 KiB), with the page cache warm and
  after evicting the files (``posix_fadvise(DONTNEED)``: the pages of these files only);
* the full SHA-256 of every file (what ``--verify-content`` reads), warm and evicted;
* opening the entry with its checks (checksum of attributes and columns, shard sizes) against
  a bare ``h5py.File`` open.

Usage: ``.venv/bin/python benchmarks/bench_cache_checks.py [--data DIR] [--cache DIR] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py

from featpipe.cache.entry import open_entry
from featpipe.cache.fingerprints import Contents
from featpipe.data.datasets import scan
from featpipe.extraction.stage import extract

TINY = {
    "backbone": "test_efficientnet",
    "weights": "none",
    "image_size": 32,
    "engine": "torch",
    "precision": "fp32",
    "batch_size": 32,
}


def _best(fn: Callable[[], object], repeat: int, before: Callable[[], object] = lambda: None):
    times = []
    for _ in range(repeat):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/elpv"))
    parser.add_argument("--cache", type=Path, default=Path("cache-bench-checks"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    entry = extract(args.data, cache_dir=args.cache, **TINY).entry
    dataset = scan(args.data)
    relpaths = [i.relpath for i in dataset.items]
    files = [dataset.root / r for r in relpaths]
    size = sum(p.stat().st_size for p in files)
    print(f"{len(files)} files, {size / 1e6:.0f} MB, entry {entry}")
    rows = {
        "whole cache hit (extract)": _best(
            lambda: extract(args.data, cache_dir=args.cache, **TINY), args.repeat
        ),
        "scan (stat only)": _best(lambda: scan(args.data), args.repeat),
        "quick fingerprints, warm": _best(lambda: Contents(dataset), args.repeat),
        "quick fingerprints, evicted": _best(
            lambda: Contents(dataset), args.repeat, lambda: _evict(files)
        ),
        "full SHA-256, warm": _best(lambda: Contents(dataset, full=True), args.repeat),
        "full SHA-256, evicted": _best(
            lambda: Contents(dataset, full=True), args.repeat, lambda: _evict(files)
        ),
        "open_entry with checks": _best(lambda: open_entry(entry).close(), 5 * args.repeat),
        "bare h5py.File open": _best(lambda: h5py.File(entry, "r").close(), 5 * args.repeat),
    }
    for name, seconds in rows.items():
        print(f"{name:32s} {seconds:8.4f} s")
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python benchmarks/bench_cache_checks.py " + " ".join(sys.argv[1:]),
            "load_average": os.getloadavg()[0],
            "files": len(files),
            "megabytes": round(size / 1e6, 1),
            "seconds": {name: round(seconds, 4) for name, seconds in rows.items()},
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
