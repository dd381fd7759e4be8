"""One command for every measurement: ``make bench`` (or ``python benchmarks/run.py``).

Writes ``benchmarks/results/<section>.json`` (raw figures, the machine, the date and the command)
and ``benchmarks/RESULTS.md`` (the tables quoted in README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_advise
import bench_allocator
import bench_cuda
import bench_distributed
import bench_extract
import bench_finetune
import bench_fit
import bench_views
import torch

from featpipe.cache.catalog import machine_signature

HERE = Path(__file__).parent
SECTIONS = {
    "extract": bench_extract,
    "allocator": bench_allocator,
    "fit": bench_fit,
    "finetune": bench_finetune,
    "distributed": bench_distributed,
    "cuda": bench_cuda,
    "advise": bench_advise,
    "views": bench_views,
}
# `make bench`: everything but the advise and views checks (they run networks for tens of
# minutes), and the CUDA section only where there is a GPU.
DEFAULT = ["extract", "allocator", "fit", "finetune", "distributed"] + (
    ["cuda"] if torch.cuda.is_available() else []
)


def machine() -> str:
    cpu = machine_signature().split("|")[1]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=DEFAULT, choices=list(SECTIONS))
    parser.add_argument("--work", type=Path, default=HERE / "out", help="Scratch data and caches.")
    parser.add_argument("--quick", action="store_true", help="Smaller datasets (a smoke run).")
    parser.add_argument(
        "--advise-data",
        nargs="*",
        choices=list(bench_advise.DATASETS),
        help="Datasets for the advise section (default: all; a CPU manages elpv, fashion-100).",
    )
    parser.add_argument(
        "--views-data",
        nargs="*",
        choices=list(bench_views.DATASETS),
        help="Datasets for the views section (default: all).",
    )
    parser.add_argument(
        "--tag", default="", help="Suffix of the results file, e.g. the machine: advise-gpu.json"
    )
    args = parser.parse_args()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        extra = {"advise": {"datasets": args.advise_data}, "views": {"datasets": args.views_data}}
        extra = extra.get(name, {})
        results = SECTIONS[name].run(args.work, quick=args.quick, **extra)
        record = {
            "section": name,
            "date": started,
            "machine": machine(),
            "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]),
            "results": results,
        }
        suffix = f"-{args.tag}" if args.tag else ""
        (out / f"{name}{suffix}.json").write_text(json.dumps(record, indent=1))
    write_markdown(out)


def write_markdown(out: Path) -> None:
    parts = ["# Benchmark results", ""]
    for name, module in SECTIONS.items():
        for path in sorted(out.glob(f"{name}.json")) + sorted(out.glob(f"{name}-*.json")):
            parts += _section(path, module)
    (HERE / "RESULTS.md").write_text("\n".join(parts))


def _section(path: Path, module) -> list[str]:
    record = json.loads(path.read_text())
    return [
        f"## {path.stem}",
        "",
        f"Measured {record['date']} on {record['machine']}.",
        f"Command: `{record['command']}`",
        "",
        module.markdown(record["results"]),
        "",
    ]


if __name__ == "__main__":
    main()
