"""PIL decoding in workers against the tensor decode path, on the CPU, side by side in one run.

``python benchmarks/bench_decode.py`` makes (once) a JPEG dataset of realistic size under
``benchmarks/out/``: scikit-image's real photos, re-encoded at 500×375 or 375×500 from random
crops and flips at random JPEG qualities, so that no two files are alike. It then measures,
alternating the variants and keeping the best of several repeats (the machine is shared):

* decode only: the DataLoader alone, images/s, for three variants: ``pil`` (workers decode,
  resize, crop with PIL), ``tensor`` (on the CPU: workers decode with torchvision and resize
  with torch), ``tensor-main`` (workers read bytes, the main process decodes the batch and
  resizes: what a GPU run does, here on the CPU);
* whole extraction with a small real model (Lite0, offline weights, fp32, torch engine), a fresh
  cache each time, images/s of the extraction loop.

Writes ``benchmarks/results/decode-cpu.json`` with the load average at each measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "hubble_deep_field")
SIZES = ((500, 375), (375, 500))
VARIANTS = ("pil", "tensor", "tensor-main")


# EfficientNet-Lite0's data config (timm's, for 224 px): the decode-only figures use it.
LITE0_CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
}


def _photo_pool() -> list[np.ndarray]:
    import skimage.data

    return [getattr(skimage.data, name)() for name in PHOTOS]


def _write(args: tuple[Path, int]) -> None:
    """File ``i``: a random crop of a photo (at least 60% of each side), maybe mirrored, resized
    to a common camera size and saved at a random quality."""
    from PIL import Image

    path, i = args
    rng = np.random.default_rng(i)
    photo = _POOL[i % len(_POOL)]
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    image = Image.fromarray(photo[top : top + ch, left : left + cw])
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    size = SIZES[int(rng.random() < 0.25)]
    image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
        path, quality=int(rng.integers(75, 96))
    )


_POOL: list[np.ndarray] = []


def _init() -> None:
    _POOL.extend(_photo_pool())


def make_jpegs(root: Path, count: int, processes: int | None = None) -> Path:
    """``count`` distinct real-photo JPEGs in ``root/<class>/``, made once (a marker file says
    the folder is complete)."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == str(count):
        return root
    jobs = []
    for i in range(count):
        folder = root / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"img_{i:06d}.jpg", i))
    with Pool(processes or os.cpu_count(), initializer=_init) as pool:
        pool.map(_write, jobs, chunksize=64)
    done.write_text(str(count))
    return root


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


@contextlib.contextmanager
def variant(name: str) -> Iterator[str]:
    """The decoder of a variant; ``tensor-main`` also makes the tensor path decode in the main
    process whatever the device (the path a GPU run takes)."""
    from featpipe.data import tensor_decode

    real = tensor_decode.decode_on_device
    if name == "tensor-main":
        tensor_decode.decode_on_device = lambda device: True
    try:
        yield "pil" if name == "pil" else "tensor"
    finally:
        tensor_decode.decode_on_device = real


def decode_rate(
    paths: list[str], name: str, device: Any, batch: int, workers: int
) -> dict[str, Any]:
    """Images/s of the loader and its main-process step alone: no model."""
    from featpipe.data.loader import make_loader
    from featpipe.data.tensor_decode import pipeline
    from featpipe.data.transforms import ImageToUint8

    pil = ImageToUint8(LITE0_CONFIG, False)
    with variant(name) as decode:
        transform, collate, finish = pipeline(decode, paths, pil, device)
    loader = make_loader(
        paths, transform, batch, workers, device.type == "cuda", collate_fn=collate
    )
    start = time.perf_counter()
    count = 0
    for out in map(finish, loader):
        count += len(out.index)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "decode": name,
        "images": count,
        "workers": workers,
        "batch": batch,
        "images_per_s": round(count / seconds, 1),
        "load": load(),
    }


def extract_rate(data: Path, name: str, **options: Any) -> dict[str, Any]:
    """Images/s of one whole extraction into a fresh cache (the loop, not the model build)."""
    from featpipe.extraction.stage import extract

    with tempfile.TemporaryDirectory() as cache, variant(name) as decode:
        result = extract(data, "tf_efficientnet_lite0", decode=decode, cache_dir=cache, **options)
    loop = result.timings["extract_s"]
    return {
        "decode": name,
        "images": result.n_new,
        "workers": result.settings.get("workers"),
        "batch": result.settings["batch_size"],
        "precision": result.settings["precision"],
        "images_per_s": round(result.n_new / loop, 1),
        "call_images_per_s": round(result.images_per_second, 1),
        "load": load(),
    }


def best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, the best repeat (with every repeat kept)."""
    out = {}
    for row in rows:
        mine = out.setdefault(row["decode"], {"best": row, "all": []})
        mine["all"].append(row["images_per_s"])
        if row["images_per_s"] > mine["best"]["images_per_s"]:
            mine["best"] = row
    return out


def _ratio(rows: dict[str, Any], name: str) -> float:
    return round(rows[name]["best"]["images_per_s"] / rows["pil"]["best"]["images_per_s"], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--extract-files", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extract-repeats", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "decode-cpu.json")
    args = parser.parse_args()
    import torch

    cpu = torch.device("cpu")
    data = make_jpegs(HERE / "out" / f"decode-jpegs-{args.files}", args.files)
    small = make_jpegs(HERE / "out" / f"decode-jpegs-{args.extract_files}", args.extract_files)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    decode_rows, extract_rows = [], []
    for repeat in range(args.repeats):
        for name in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:  # alternated
            decode_rows.append(decode_rate(paths, name, cpu, 32, args.workers))
            print(decode_rows[-1], flush=True)
    for repeat in range(args.extract_repeats):
        for name in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
            extract_rows.append(
                extract_rate(
                    small,
                    name,
                    weights="offline",
                    precision="fp32",
                    engine="torch",
                    batch_size=32,
                    workers=args.workers,
                )
            )
            print(extract_rows[-1], flush=True)
    decode, whole = best(decode_rows), best(extract_rows)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "dataset": f"{args.files} JPEGs (whole extraction: {args.extract_files}), 500×375 or "
        "375×500, random crops/flips of scikit-image photos, quality 75-95",
        "decode_only": decode,
        "whole_extraction": whole,
        "ratios_to_pil": {
            section: {name: _ratio(rows, name) for name in VARIANTS[1:]}
            for section, rows in (("decode_only", decode), ("whole_extraction", whole))
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ratios_to_pil"]))


if __name__ == "__main__":
    main()
