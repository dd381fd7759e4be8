"""Every GPU figure issue 14 asks for, in one call of under 8 minutes (``run`` tool: one H100/H200).

``python benchmarks/bench_gpu.py`` writes ``benchmarks/results/gpu.json`` after each section (a
run cut short keeps what it measured):

1. fidelity: Lite0 (offline, fp32) embeddings of real photos, tensor path on the GPU (nvJPEG)
   against the PIL path and against the tensor path on the CPU (libjpeg-turbo), as cosines;
   and the largest pixel difference between the two tensor decoders;
2. decode only, per path, images/s: PIL in workers, tensor on the device; alternated;
3. whole extraction against the forward-only ceiling, same model (Lite0, bf16, channels_last)
   and batch: the ceiling on synthetic ``uint8`` batches, then ``extract`` with each decoder
   (fresh cache each time, alternated), and first two consecutive default-worker PIL runs (the
   2,600 against 5,742 img/s question: start-up against steady state);
4. heads: seconds per epoch of K = 1 and 32 stacked linear heads over 1M × 1280 features,
   1000 classes, batch 128: on the device with the features resident, on the device streamed
   from the host, and on the CPU (an epoch over a subset, scaled to 1M rows: said so).

``--smoke`` runs every section at toy sizes, on the CPU when there is no GPU, in about a minute:
the check that the script works before device time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_decode
import numpy as np
import torch

HERE = Path(__file__).parent
BACKBONE = "tf_efficientnet_lite0"
BUDGET_S = 7 * 60  # sections that would start after this are skipped (the call's limit is 8 min)


def fidelity(device: torch.device, work: Path) -> dict[str, Any]:
    from PIL import Image

    from featpipe.data.tensor_decode import BytesOrPil, TensorDecoder, collate
    from featpipe.data.transforms import ImageToUint8
    from featpipe.extraction.stage import extract

    folder = work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    import skimage.data

    for name in ("chelsea", "coffee", "astronaut", "rocket", "camera"):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.jpg", quality=90)
    common = {"weights": "offline", "precision": "fp32", "engine": "torch", "batch_size": 5}
    rows = {}
    for label, decode, where in (
        ("pil", "pil", device),
        ("tensor", "tensor", device),
        ("tensor_cpu", "tensor", torch.device("cpu")),
    ):
        with tempfile.TemporaryDirectory() as cache:
            result = extract(
                folder, BACKBONE, decode=decode, device=str(where), cache_dir=cache, **common
            )
            rows[label] = result.load().X

    def cosine(a: np.ndarray, b: np.ndarray) -> list[float]:
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        return [round(float(c), 6) for c in cos]

    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    pil = ImageToUint8(bench_decode.LITE0_CONFIG, False)
    batch = collate([(i, BytesOrPil(pil)(p), "") for i, p in enumerate(paths)])
    here = TensorDecoder(paths, pil, device)(batch).images.cpu().int()
    there = TensorDecoder(paths, pil, torch.device("cpu"))(batch).images.int()
    return {
        "photos": [Path(p).name for p in paths],
        "cosine_tensor_device_to_pil": cosine(rows["tensor"], rows["pil"]),
        "cosine_tensor_device_to_tensor_cpu": cosine(rows["tensor"], rows["tensor_cpu"]),
        "pixels_device_vs_cpu_tensor": {
            "max_abs": int((here - there).abs().max()),
            "mean_abs": round(float((here - there).abs().float().mean()), 4),
        },
    }


def decode_only(
    paths: list[str], device: torch.device, batch: int, workers: int, repeats: int
) -> dict[str, Any]:
    rows = []
    for repeat in range(repeats):
        for decode in ("pil", "tensor") if repeat % 2 == 0 else ("tensor", "pil"):
            rows.append(bench_decode.decode_rate(paths, decode, device, batch, workers))
            print(rows[-1], flush=True)
    return bench_decode.best(rows)


def ceiling(device: torch.device, precision: str, batch: int, seconds: float) -> float:
    from featpipe.backbones.build import BackboneSpec, build_backbone
    from featpipe.runtime.engines import Normalized, TorchEngine
    from featpipe.runtime.tuning import measure

    built = build_backbone(BackboneSpec(BACKBONE, "offline"))
    module = Normalized(built.module, built.data_config)
    engine = TorchEngine(module, device, precision, channels_last=True)
    return measure(engine, batch, module.input_size, min_seconds=seconds, windows=3)


def whole(
    data: Path, device: torch.device, precision: str, batch: int, workers: int, repeats: int
) -> dict[str, Any]:
    options = {
        "weights": "offline",
        "precision": precision,
        "engine": "torch",
        "batch_size": batch,
        "device": str(device),
    }
    gap = []
    for _ in range(2):  # consecutive default-worker runs: start-up against steady state
        gap.append(bench_decode.extract_rate(data, "pil", **options))
        print("gap", gap[-1], flush=True)
    rows = []
    for repeat in range(repeats):
        for decode in ("pil", "tensor") if repeat % 2 == 0 else ("tensor", "pil"):
            rows.append(bench_decode.extract_rate(data, decode, workers=workers, **options))
            print(rows[-1], flush=True)
    return {"consecutive_default_workers": gap, "by_decoder": bench_decode.best(rows)}


def heads(
    device: torch.device, rows: int, dim: int, classes: int, cpu_rows: int, ks: tuple[int, ...]
) -> list[dict[str, Any]]:
    from featpipe.heads import placement
    from featpipe.heads.config import HeadConfig
    from featpipe.heads.stacked import train_group

    gen = torch.Generator(device).manual_seed(0)
    X = torch.randn(rows, dim, generator=gen, device=device)
    y = torch.randint(0, classes, (rows,), generator=gen, device=device)
    out = []

    def epoch(k: int, X: torch.Tensor, y: torch.Tensor, where: torch.device) -> float:
        grid = [HeadConfig(head="linear", epochs=1, lr=1e-3 * (1 + i)) for i in range(k)]
        with placement.training_on(where):
            start = time.perf_counter()
            train_group(grid, X, y, n_out=classes)
            if where.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    host_X, host_y = X.cpu(), y.cpu()
    for k in ks:
        row: dict[str, Any] = {"k": k, "rows": rows, "dim": dim, "classes": classes, "batch": 128}
        if device.type == "cuda":
            row["device_resident_s"] = round(epoch(k, X, y, device), 2)
            real = placement.budget
            placement.budget = lambda _device: 0  # as if the features did not fit
            try:
                row["device_streamed_s"] = round(epoch(k, host_X, host_y, device), 2)
            finally:
                placement.budget = real
        seconds = epoch(k, host_X[:cpu_rows], host_y[:cpu_rows], torch.device("cpu"))
        row["cpu_s"] = round(seconds * rows / cpu_rows, 2)
        row["cpu_note"] = f"one epoch over {cpu_rows} rows, scaled to {rows}"
        row["load"] = bench_decode.load()
        out.append(row)
        print(row, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, CPU if no GPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not args.smoke:
        raise SystemExit("bench_gpu needs a GPU; --smoke runs it at toy sizes on the CPU")
    smoke = args.smoke
    size = {
        "files": 24 if smoke else 20000,
        "batch": 8 if smoke else 256,
        "workers": 2 if smoke else max(1, (os.cpu_count() or 2) - 1),
        "repeats": 1 if smoke else 2,
        "precision": "bf16" if cuda else "fp32",
    }
    out = args.out or HERE / "results" / ("gpu-smoke.json" if smoke else "gpu.json")
    results: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cpu_cores": os.cpu_count(),
        "sizes": size,
    }

    def save(section: str, make: Any) -> None:
        if time.perf_counter() - started > BUDGET_S:
            results[section] = "skipped: time budget spent"
        else:
            t0 = time.perf_counter()
            results[section] = make()
            results[f"{section}_s"] = round(time.perf_counter() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    work = HERE / "out" / ("gpu-smoke" if smoke else "gpu")
    data = bench_decode.make_jpegs(work / f"jpegs-{size['files']}", size["files"])
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    b, w, r, p = size["batch"], size["workers"], size["repeats"], size["precision"]
    save("fidelity", lambda: fidelity(device, work))
    save("decode_only", lambda: decode_only(paths, device, b, w, r))
    save("forward_ceiling_images_per_s", lambda: round(ceiling(device, p, b, 1 if smoke else 6)))
    save("whole_extraction", lambda: whole(data, device, p, b, w, r))
    extraction = results.get("whole_extraction")
    if isinstance(extraction, dict):
        top = results["forward_ceiling_images_per_s"]
        results["share_of_ceiling"] = {
            name: round(v["best"]["images_per_s"] / top, 3)
            for name, v in extraction["by_decoder"].items()
        }
    rows, cpu_rows = (2000, 500) if smoke else (1_000_000, 20_000)
    ks = (1, 4) if smoke else (1, 32)
    save("heads_epoch", lambda: heads(device, rows, 64 if smoke else 1280, 10 if smoke else 1000,
                                      cpu_rows, ks))  # fmt: skip
    results["total_s"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("share_of_ceiling", "total_s") if k in results}))


if __name__ == "__main__":
    main()
