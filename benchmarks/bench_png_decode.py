"""PNG decoding by libspng against PIL, in featpipe's own ``load_image``, side by side.

For each folder of PNGs: every file decoded both ways once (the pixels must be equal, file for
file; how many libspng decoded is counted, the rest go to PIL either way), then ``--rounds``
alternated rounds over the files, one core, the files in the page cache (read once before).
Prints and writes milliseconds per image, every round, and the ratio of the bests::

    .venv/bin/python benchmarks/bench_png_decode.py /tmp/bench-engines/pngs-3000 \\
        /tmp/bench-engines/elpv --json benchmarks/results/png-decode.json

(``bench_engines.py`` makes those two folders: 3,000 colour 256 px crops of real photos and
ELPV's 2,624 grey 300 px cells.) Timings on a shared machine are only comparable within one
run, and only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import featpipe.data.images as images
from featpipe.data.images import load_image


class Counting:
    """pyspng, counting the files it decodes."""

    def __init__(self, module: Any) -> None:
        self.module, self.calls = module, 0

    def load(self, data: bytes) -> np.ndarray:
        self.calls += 1
        return self.module.load(data)


def decode_all(paths: list[Path], spng: Any) -> float:
    """Seconds to decode ``paths`` with libspng (``spng``: the module) or PIL alone (None)."""
    images.pyspng = spng
    start = time.perf_counter()
    for path in paths:
        load_image(path)
    return time.perf_counter() - start


def folder(root: Path, rounds: int, spng: Any) -> dict[str, Any]:
    paths = sorted(root.rglob("*.png"))
    for path in paths:
        path.read_bytes()  # into the page cache, for both alike
    equal, taken = 0, 0
    for path in paths:
        images.pyspng = Counting(spng)
        fast = np.asarray(load_image(path))
        taken += images.pyspng.calls
        images.pyspng = None
        equal += np.array_equal(fast, np.asarray(load_image(path)))
    times: dict[str, list[float]] = {"libspng": [], "PIL": []}
    for i in range(rounds):
        order = [("libspng", spng), ("PIL", None)]
        for name, module in order if i % 2 == 0 else order[::-1]:  # alternated
            times[name].append(decode_all(paths, module) / len(paths) * 1e3)
    images.pyspng = spng
    best = {name: min(ms) for name, ms in times.items()}
    row = {
        "folder": str(root),
        "files": len(paths),
        "pixels_equal": f"{equal}/{len(paths)}",
        "decoded_by_libspng": taken,  # the others (grey, say) went to PIL both ways
        "ms_per_image_rounds": {k: [round(v, 3) for v in ms] for k, ms in times.items()},
        "ms_per_image_best": {k: round(v, 3) for k, v in best.items()},
        "pil_over_libspng": round(best["PIL"] / best["libspng"], 2),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    spng = images.pyspng
    if spng is None:
        raise SystemExit("pyspng is not installed here: nothing to compare")
    rows = [folder(root, args.rounds, spng) for root in args.folders]
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": f"{platform.processor() or platform.machine()}, "
                    f"{os.cpu_count()} cores",
                    "folders": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
