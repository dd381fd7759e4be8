"""In-memory against streamed fit: accuracy, wall time and peak RSS, each in a fresh process.

Runs ``featpipe fit`` through its console script under ``/usr/bin/time -v`` (the maximum
resident set size is the whole process's peak), alternating the two modes, for a ridge alpha
sweep and the default sweep (five stacked linear heads, then the refit on train + val; three
seeds, since one seed moves the accuracy by a few test images), on an entry already in the
cache (a cache hit: no extraction in the timings). The accuracy is the run's test mean over its
seeds (``metrics.json``)::

    .venv/bin/python benchmarks/bench_streaming.py /work/bench/fashion-3k.csv \\
        --budget 4M -- -b tf_efficientnet_lite0 --pool avgmax --weights offline \\
        --precision fp32 --engine torch --cache-dir /work/bench/cache --allow-outside
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = Path(sys.executable).parent / "featpipe"
ALPHAS = ",".join(f"{a:.4g}" for a in (10.0 ** (i / 4 - 3) for i in range(45)))
HEADS = {
    "ridge 45 alpha": ["--head", "ridge", "--sweep", f"alpha={ALPHAS}"],
    "default sweep, 3 seeds": ["--seeds", "3"],
}


def run(data: str, extra: list[str], head: list[str], budget: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as runs:
        command = [str(CLI), "fit", data, *extra, *head, "--runs-dir", runs]
        if budget:
            command += ["--memory-budget", budget]
        start = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-v", *command], capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(done.stderr[-2000:])
        [metrics] = Path(runs).rglob("metrics.json")
        accuracy = json.loads(metrics.read_text())["test"]["mean"]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return {"seconds": seconds, "peak_rss_mib": rss / 1024, "test_accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--budget", default="4M")
    parser.add_argument("--repeats", type=int, default=2)
    args, extra = parser.parse_known_args()  # the rest: fit options
    args.extra = [e for e in extra if e != "--"]
    print("| head | mode | test accuracy | wall s | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, head in HEADS.items():
        for _ in range(args.repeats):
            for budget in (None, args.budget):
                r = run(args.data, args.extra, head, budget)
                mode = f"streamed ({budget})" if budget else "in memory"
                print(
                    f"| {name} | {mode} | {r['test_accuracy']:.4f} | {r['seconds']:.1f} "
                    f"| {r['peak_rss_mib']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
