"""How featpipe's costs grow with N: the scan, extraction, cache hits, small changes, fit.

For every N asked (default 20,000, 200,000 and 1,000,000, each only where the disk has room:
it is checked first, and a size that does not fit is skipped with a note), N synthetic 16×16
grayscale PNGs are written in 10 class folders (issue 28's dataset: 200,000 files made 790 MB),
then each step below runs as a fresh ``featpipe`` console-script process, timed by its wall
clock, with its peak RSS (that of the process or its largest child, from ``os.wait4``) and the
machine's load average when it started:

``datasets describe``   the scan and split alone;
``extract (first)``     every row computed;
``extract (hit)``       nothing changed: a cache hit (the stat rule: no file is read);
``extract 1% alone``    the N/100 new files extracted on their own, into another cache, with
                        the engine and batch size the first extract settled (so no speed
                        probe, and the same arithmetic as the addition's): what the 1%
                        addition below may cost, plus its overhead;
``extract (+1%)``       the N/100 files moved into the dataset, then extracted;
``extract (hit, +1%)``  the hit after it (the addition's stats are recorded: no file read);
``extract (swap)``      one file replaced by another of the same size, renamed over it, its
                        mtime reset with ``os.utime``: one row recomputed;
``cache verify``        every byte of the entry and its shards read;
``fit check``           what ``fit`` does before fitting, in a fresh Python process: the scan
                        and freshness check (``extract`` on a fresh entry), then loading the
                        features; timed apart, with the dataset files the check opened
                        (counted with an audit hook);
``fit (memory)``        ``featpipe fit`` with its defaults, features loaded;
``fit (streamed)``      the same with a memory budget of a quarter of the features (issue
                        28's ``--memory-budget 256M`` at 200,000): streamed from the cache.

The model settings are issue 28's: ``-b mobilenetv3_small_050 --weights none --image-size 32
--precision fp32``. Figures go to ``benchmarks/results/scale.json`` (merged by N, so sizes can
be measured on different days; each carries its machine, date and load) and a markdown table
to ``benchmarks/results/scale.md``. The data stays under ``--work`` for the next run (its
cache is rebuilt every time); ``--remove`` deletes it afterwards.

``--additions K`` times K 1% additions against their 1% alone, the first as above, the others
after the fits, each on top of the last: the spread of the difference the goal is about.

``--smoke`` runs every step at N=300 (a test runs it: tests/test_bench_scale_smoke.py).

Usage::

    .venv/bin/python benchmarks/bench_scale.py --smoke --work /tmp/featpipe-scale-smoke
    .venv/bin/python benchmarks/bench_scale.py --n 20000 --work /tmp/featpipe-scale
    .venv/bin/python benchmarks/bench_scale.py --n 200000 1000000 --work /big/disk/scale
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
FEATPIPE = str(Path(sys.executable).with_name("featpipe"))
MODEL = ["-b", "mobilenetv3_small_050", "--weights", "none", "--image-size", "32"]
MODEL += ["--precision", "fp32"]
CLASSES = 10
# Disk per image: a 16×16 PNG takes a 4 KiB block; a cached row at most 1,024 float32.
DATA_BYTES, ROW_BYTES = 4096, 4096
HEADROOM = 1 << 30
ADDED = "added"  # the 1% addition's file names start with this
SMOKE_N = 300  # --smoke: every step runs, at a size that checks the script, not featpipe
SMOKE_MODEL = ["--engine", "torch"]  # at N <= SMOKE_N: no ONNX export, whose time is fixed
READY = ".complete"  # marks a finished dataset (hidden: the scan does not see it)

FIT_CHECK = """
import json, os, sys, time
t0 = time.perf_counter()
data, cache = sys.argv[1], sys.argv[2]
opened = []
def count(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        if os.fspath(args[0]).startswith(data + "/"):
            opened.append(args[0])
sys.addaudithook(count)
from featpipe.extraction.stage import extract
t1 = time.perf_counter()
engine = "torch" if "--engine" in sys.argv[3:] else None  # as the extract steps ran
options = {"engine": engine} if engine else {}
result = extract(data, "mobilenetv3_small_050", weights="none", image_size=32,
                 precision="fp32", cache_dir=cache, **options)
t2 = time.perf_counter()
checked = len(opened)
features = result.load()
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "check_s": t2 - t1, "load_s": t3 - t2, "hit": result.hit,
                  "rows": len(features), "files_opened_by_check": checked}))
"""


def _write_images(job: tuple[Path, int, int, str, int]) -> int:
    """Write images ``start:stop`` into ``root``'s class folders (one process of the pool)."""
    root, start, stop, prefix, seed = job
    rng = np.random.default_rng([seed, start])
    for i in range(start, stop):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(buf, "PNG")
        (root / f"class{i % CLASSES}" / f"{prefix}{i:07d}.png").write_bytes(buf.getvalue())
    return stop - start


def generate(root: Path, n: int, prefix: str, seed: int) -> None:
    for c in range(min(n, CLASSES)):  # a class folder without images is refused
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    step = 5000
    jobs = [(root, a, min(n, a + step), prefix, seed) for a in range(0, n, step)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        assert sum(pool.map(_write_images, jobs)) == n


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` as a fresh process: its wall time, peak RSS, exit status, last lines."""
    load = os.getloadavg()[0]
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {' | '.join(tail)}")
    return {
        "seconds": round(wall, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "load": round(load, 2),
        "tail": tail,
    }


def settled(first: dict) -> list[str]:
    """The engine and batch size a first extract settled, as options (from its summary line:
    ``[onnxruntime fp32, batch 32, 0 workers]``); none when it names none."""
    found = re.search(r"\[(\w+) \w+, batch (\d+),", " ".join(first["tail"]))
    return ["--engine", found[1], "--batch-size", found[2]] if found else []


def swap_one(root: Path) -> str:
    """Replace a file by another image of the same size and mtime: a flat gray PNG (smaller
    than any noise image) padded to its size (PNG ignores what follows its end), written
    beside it, renamed over it, its mtime set back. Its gray differs from the file's current
    content, so a rerun on reused data swaps in new content too (the same bytes again would be
    a correct cache hit, and no swap)."""
    target = root / "class0" / "img0000000.png"
    st = target.stat()
    current = target.read_bytes()
    for gray in (128, 64):
        buf = io.BytesIO()
        Image.new("L", (16, 16), gray).save(buf, "PNG")
        data = buf.getvalue()
        if not current.startswith(data):
            break
    assert len(data) <= st.st_size
    fresh = target.with_name(".swap.png")
    fresh.write_bytes(data + b"\0" * (st.st_size - len(data)))
    os.utime(fresh, ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh.rename(target)
    now = target.stat()
    assert (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return str(target.relative_to(root))


def streamed_budget(n: int) -> int:
    """A memory budget of a quarter of the features' size, so that the fit streams at every N
    (issue 28's 256M at 200,000 images, about 0.8 GB of features)."""
    return max(1, n * ROW_BYTES // 4)


def needed_bytes(n: int, have_data: bool) -> int:
    data = 0 if have_data else int(n * 1.01 * DATA_BYTES)
    return data + int(n * 1.02 * ROW_BYTES) + HEADROOM


def bench(n: int, work: Path, additions: int = 1) -> dict:
    base = work / f"n{n}"
    base = base.resolve()
    data, cache, runs, logs = base / f"scale{n}", base / "cache", base / "runs", base / "logs"
    staging, side_cache = base / "added", base / "cache-added"
    have_data = (data / READY).exists()
    free = shutil.disk_usage(work).free
    if free < needed_bytes(n, have_data):
        note = (
            f"skipped: {free / 2**30:.1f} GiB free, {needed_bytes(n, have_data) / 2**30:.1f} needed"
        )
        print(f"N={n}: {note}")
        return {"skipped": note}
    for folder in (cache, runs, logs, staging, side_cache):
        shutil.rmtree(folder, ignore_errors=True)
    logs.mkdir(parents=True)
    if not have_data:
        shutil.rmtree(data, ignore_errors=True)
        print(f"N={n}: writing {n} images to {data}")
        generate(data, n, "img", seed=0)
        (data / READY).write_text(str(n))
    for stale in data.glob(f"class*/{ADDED}*.png"):  # a previous run's 1% addition
        stale.unlink()
    added = max(1, n // 100)
    generate(staging, added, ADDED, seed=1)
    time.sleep(2.5)  # past the stat rule's racy window (RACY_NS), as any real dataset is
    model = [*MODEL, *(SMOKE_MODEL if n <= SMOKE_N else [])]
    extract = [FEATPIPE, "extract", str(data), *model, "--cache-dir", str(cache)]
    steps: dict[str, dict] = {}

    def step(name: str, cmd: list[str]) -> None:
        steps[name] = timed(cmd, logs / f"{len(steps):02d}.log")
        print(
            f"N={n}  {name:22s} {steps[name]['seconds']:8.2f} s  "
            f"{steps[name]['peak_rss_mib']:8.0f} MiB  load {steps[name]['load']}"
        )

    step("datasets describe", [FEATPIPE, "datasets", "describe", str(data)])
    step("extract (first)", extract)
    step("extract (hit)", extract)
    alone = [FEATPIPE, "extract", str(staging), *model, *settled(steps["extract (first)"])]

    def add_one_percent(suffix: str) -> tuple[float, float]:
        """The 1% in ``staging`` extracted alone, then moved into the dataset and extracted
        there: the two wall times."""
        names = f"extract 1% alone{suffix}", f"extract (+1%){suffix}"
        shutil.rmtree(side_cache, ignore_errors=True)
        step(names[0], [*alone, "--cache-dir", str(side_cache)])
        for path in staging.glob("class*/*.png"):
            path.rename(data / path.parent.name / path.name)
        time.sleep(2.5)  # a rename changes ctime: past the racy window again
        step(names[1], extract)
        return steps[names[0]]["seconds"], steps[names[1]]["seconds"]

    pairs = [add_one_percent("")]
    step("extract (hit, +1%)", extract)
    swapped = swap_one(data)
    step("extract (swap)", extract)
    step("cache verify", [FEATPIPE, "cache", "verify", "--cache-dir", str(cache)])
    check = [sys.executable, "-c", FIT_CHECK, str(data), str(cache), *model]
    steps["fit check"] = timed(check, logs / "fit-check.log")
    steps["fit check"] |= json.loads(steps["fit check"]["tail"][-1])
    print(f"N={n}  fit check: {steps['fit check']}")
    fit = [FEATPIPE, "fit", str(data), *model, "--cache-dir", str(cache), "--runs-dir", str(runs)]
    fit += ["--holdout", "0.15"]  # where the scan made no val split: a streamed fit needs one
    step("fit (memory)", fit)
    step("fit (streamed)", [*fit, "--memory-budget", str(streamed_budget(n))])
    for k in range(2, additions + 1):  # more 1% additions on top: the pair's spread
        generate(staging, added, f"{ADDED}{k}-", seed=k)
        time.sleep(2.5)
        pairs.append(add_one_percent(f" #{k}"))
    return {
        "n": n,
        "added": added,
        "swapped": swapped,
        # (1% alone, +1%) wall seconds, pair by pair: the first is the table's
        "additions": [{"alone": a, "added": b, "extra": round(b - a, 3)} for a, b in pairs],
        "megabytes": round(sum(p.stat().st_size for p in data.rglob("*.png")) / 1e6, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "cpus": os.cpu_count(),
        "steps": steps,
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((ln.split(":", 1)[1].strip() for ln in handle if "model name" in ln), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def markdown(results: dict[str, dict]) -> str:
    sizes = sorted((r for r in results.values() if "steps" in r), key=lambda r: r["n"])
    lines = [
        "# featpipe at scale (benchmarks/bench_scale.py)",
        "",
        "Each step is a fresh process: wall seconds / peak RSS MiB (load average at its start).",
        "",
    ]
    for r in sizes:
        lines.append(f"- N={r['n']:,}: {r['megabytes']} MB, {r['date']}, {r['machine']}")
    lines += [f"- {k}: {v['skipped']}" for k, v in results.items() if "skipped" in v]
    lines += ["", "| step | " + " | ".join(f"N={r['n']:,}" for r in sizes) + " |"]
    lines.append("|---|" + "---|" * len(sizes))
    for name in sizes[0]["steps"] if sizes else []:
        cells = []
        for r in sizes:
            s = r["steps"].get(name)
            cells.append(
                "-"
                if s is None
                else f"{s['seconds']:.2f} s / {s['peak_rss_mib']:.0f} MiB (load {s['load']:.1f})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in sizes:
        extra = [a["extra"] for a in r.get("additions", [])]
        if extra:
            lines.append(
                f"- N={r['n']:,}: +1% minus the 1% alone, {len(extra)} pair(s): "
                + ", ".join(f"{e:.2f}" for e in extra)
                + f" s (mean {sum(extra) / len(extra):.2f} s)"
            )
    lines += ["", "| fit check, in one process | check s | load s | dataset files opened |"]
    lines.append("|---|---|---|---|")
    for r in sizes:
        c = r["steps"]["fit check"]
        lines.append(
            f"| N={r['n']:,} | {c['check_s']:.2f} | {c['load_s']:.2f} | "
            f"{c['files_opened_by_check']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/featpipe-scale"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--remove", action="store_true", help="Delete the data afterwards.")
    parser.add_argument(
        "--additions",
        type=int,
        default=1,
        help="1%% additions to time against the 1%% alone (the first before the hits, the "
        "others after the fits, each on top of the last): the spread of their difference.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help=f"Every step at N={SMOKE_N}, to scale-smoke.json."
    )
    args = parser.parse_args()
    args.n = args.n or ([SMOKE_N] if args.smoke else [20_000, 200_000, 1_000_000])
    name = "scale-smoke.json" if args.smoke else "scale.json"
    args.json = args.json or HERE / "results" / name
    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for n in args.n:
        record = bench(n, args.work, args.additions)
        record["command"] = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:])
        results[str(n)] = record
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        args.json.with_suffix(".md").write_text(markdown(results))
        if args.remove:
            shutil.rmtree(args.work / f"n{n}", ignore_errors=True)
    print(markdown(results))


if __name__ == "__main__":
    main()
