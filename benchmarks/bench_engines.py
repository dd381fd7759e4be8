"""The CPU engines side by side (issue 25): forward-only ceilings, whole processes, and where
an extraction's time goes.

1. **Ceiling**: forward passes only, per model (EfficientNet-Lite0 and ``tv/mobilenet_v2`` with
   offline ImageNet weights, ``vit_tiny_patch16_224`` at random init), batch 32, 224 px, in one
   process: torch fp32 channels_last, ONNX Runtime fp32, OpenVINO fp32 (as featpipe runs it:
   ``PERFORMANCE_HINT=THROUGHPUT``, whole batches taking turns on its streams' requests; and
   ``LATENCY``, one stream and one request per batch, the hint it was chosen against), torch bf16
   autocast and OpenVINO bf16 (both only on a CPU with bf16 units: without, torch's bf16 ran
   15× slower than fp32 and OpenVINO's bf16 hint quietly runs fp32). The engines are alternated
   within each round, best of ``--rounds``; each engine's min cosine to torch fp32 is taken on
   real photos (scikit-image's colour photos through the model's own transform).
2. **Whole process**: ``featpipe extract`` as a user runs it, on N PNGs (``--pngs DIR``, or N
   generated from scikit-image's photos) and on ELPV's 2,624 cells: the default (``auto``)
   against ``--engine torch --precision fp32`` and ``--engine openvino --precision fp32``, each
   warm (the probe's memo and the converted networks in place, the entry removed), alternated,
   best of ``--repeats``; the default's cold first run (probe and conversions included) is
   given separately, with a conversion timed on its own; and the course material's naive
   recipe on the same images (``bench_extract.naive_recipe``).
3. **Shares**: where a whole extraction's time goes (issue 25: at twice torch's forward rate the
   forward no longer hides the rest). ``featpipe.extract`` runs in this process on the same
   images, warm, with every part of its work timed as it runs (:class:`Stopwatch`): file
   the scan, the cache lookup, settling the key (from the probe's memo), building the backbone
   and the engine, file fingerprints, decoding, resize and crop, collating, the forward,
   screening, the SHA-256 of written files, the journal writes, the HDF5 seal and the commit;
   the rest (the loader's own overhead, the loop, provenance) is what is left. It runs with
   ``workers=0``, featpipe's choice on 2 cores (:func:`featpipe.runtime.workers.default_workers`),
   and without the thread that decodes the next batch meanwhile
   (:func:`featpipe.data.loader.prefetched`), so every part runs in this thread and the parts
   add up to the wall. Runs per worker count in ``--workers`` then show what overlapping
   decoding with the forward gains end to end, against the engine's forward-only ceiling at
   the batch size it ran: ``0`` decodes between batches, ``0+thread`` in the prefetch thread
   (featpipe's default without workers), ``0+thread LATENCY`` the same with OpenVINO fp32's
   ``LATENCY`` hint (the choice of ``THROUGHPUT`` is made in this loop), ``0+thread PIL PNGs``
   the default with PIL decoding every PNG (libspng off), ``1`` and up in loader processes;
   alternated. The whole-process part runs that PIL configuration too (``default, PIL PNGs``),
   and the default forced onto the torch path (``default, with torch``: as before a warm
   OpenVINO run went without torch), so that each is compared with the default side by side.

Timings on a shared machine are only comparable within one run; run it on a quiet machine::

    .venv/bin/python benchmarks/bench_engines.py --work /tmp/bench-engines \\
        --json benchmarks/results/engines.json
    .venv/bin/python benchmarks/bench_engines.py --smoke --work /tmp/bench-engines-smoke

``--parts`` picks some of ``ceiling,whole,shares`` (all by default), e.g. only the shares::

    .venv/bin/python benchmarks/bench_engines.py --parts shares --work /tmp/bench-engines

``--configs`` and ``--datasets`` pick some of the configurations (``default``, ``torch fp32``,
``openvino fp32``) and datasets (``pngs``, ``elpv``)::

    .venv/bin/python benchmarks/bench_engines.py --parts shares --datasets elpv \
        --configs "openvino fp32,torch fp32" --work /tmp/bench-engines

``--smoke`` runs every part tiny (one model, batch 4, one round, 24 images) to check the
mechanics; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from bench_extract import naive_recipe

import featpipe.cache.journals as journals
import featpipe.data.eval_pixels as eval_pixels
import featpipe.data.images as images
import featpipe.data.loader as loader
import featpipe.data.tensor_decode as tensor_decode
import featpipe.data.transforms as transforms
import featpipe.extraction.fill as fill
import featpipe.extraction.rows as rows
import featpipe.extraction.settle as settle
import featpipe.extraction.stage as stage
import featpipe.runtime.tuning as tuning
from featpipe import extract
from featpipe.backbones.build import BackboneSpec, build_backbone
from featpipe.cache.catalog import machine_signature
from featpipe.cache.fingerprints import Contents
from featpipe.cache.transaction import Transaction
from featpipe.data.bundled import prepare_dataset
from featpipe.data.eval_pixels import EvalPixels
from featpipe.data.transforms import ImageToUint8
from featpipe.extraction.options import ExtractOptions
from featpipe.runtime.conversions import Conversions
from featpipe.runtime.engines import Engine, Normalized, OneBatchAtATime
from featpipe.runtime.openvino_engine import (
    IR_NAME,
    OPENVINO_PRECISIONS,
    OpenVinoEngine,
    export_openvino,
    openvino_core,
    openvino_has_bf16,
)
from featpipe.runtime.tuning import build_engine, measure

HERE = Path(__file__).parent
MODELS = {
    "tf_efficientnet_lite0": "offline",
    "tv/mobilenet_v2": "offline",
    "vit_tiny_patch16_224": "none",
}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
# The whole-process configurations: the default against the two exact fp32 engines, the
# default with PIL decoding every PNG (as before libspng, and where pyspng has no wheel), and
# the default on the torch path (as before a warm run went without torch).
PIL_PNGS = "default, PIL PNGs"
WITH_TORCH = "default, with torch"
CONFIGS = {
    "default": [],
    "torch fp32": ["--engine", "torch", "--precision", "fp32"],
    "openvino fp32": ["--engine", "openvino", "--precision", "fp32"],
    PIL_PNGS: [],
    WITH_TORCH: [],
}
# The shares' configurations: PIL decoding is a way each of them runs there (``0+thread PIL PNGs``).
SHARE_CONFIGS = {
    name: flags for name, flags in CONFIGS.items() if name not in (PIL_PNGS, WITH_TORCH)
}
# ``featpipe`` as its console script runs it, with one thing switched off in the process: libspng,
# or the run without torch (featpipe.extraction.settle.runs_without_torch).
PATCHED = {
    PIL_PNGS: "import featpipe.data.images as m; m.pyspng = None",
    WITH_TORCH: "import featpipe.extraction.stage as m; m.runs_without_torch = lambda *a: False",
}
CONSOLE = "; import sys; from featpipe.cli.app import run; sys.argv[0] = 'featpipe'; run()"


class OpenVinoLatency(OneBatchAtATime):
    """OpenVINO with ``PERFORMANCE_HINT=LATENCY``: one stream runs each whole batch on all its
    threads, one synchronous request (the hint featpipe's engine was measured against)."""

    name = "openvino-latency"

    def __init__(self, files: Conversions, threads: int) -> None:
        config = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS["fp32"],
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "CACHE_DIR": str(files.openvino / "compiled"),
        }
        compiled = openvino_core().compile_model(str(files.openvino / IR_NAME), "CPU", config)
        self.request = compiled.create_infer_request()

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.request.infer({0: np.ascontiguousarray(np.asarray(images))})[0].copy()


def photo_batch(work: Path, config: dict[str, Any], batch: int) -> torch.Tensor:
    """``batch`` real photos through the model's own transform (the photos, flipped and
    rotated, repeated as needed)."""
    import skimage.data

    folder = work / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(batch):
        name = PHOTOS[i % len(PHOTOS)]
        path = folder / f"{name}-{i // len(PHOTOS)}.jpg"
        if not path.exists():
            image = np.rot90(getattr(skimage.data, name)()[..., :3], i // len(PHOTOS))
            Image.fromarray(np.ascontiguousarray(image)).save(path, quality=95)
        files.append(path)
    transform = ImageToUint8(config, False)
    return torch.stack([transform(str(f)) for f in files])


def engines_for(module: Normalized, files: Conversions, is_conv: bool) -> dict[str, Engine]:
    """Every engine of the comparison, built as featpipe builds them (bf16 only on a CPU with
    bf16 units)."""
    cpu = torch.device("cpu")
    pairs = [("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32")]
    pairs += [("torch", "bf16"), ("openvino", "bf16")] if openvino_has_bf16() else []
    built: dict[str, Engine] = {}
    for name, precision in pairs:
        settings = {"engine": name, "precision": precision, "channels_last": is_conv}
        built[f"{name} {precision}"] = build_engine(settings, module, cpu, files)
    export_openvino(module, files)
    built["openvino fp32 LATENCY"] = OpenVinoLatency(files, torch.get_num_threads())
    return built


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def ceiling(model: str, work: Path, batch: int, rounds: int, seconds: float) -> dict[str, Any]:
    """Forward-only images/s of every engine, alternated, best of ``rounds``; cosine to torch."""
    backbone = build_backbone(BackboneSpec(model, weights=MODELS[model]))
    module = Normalized(backbone.module, backbone.data_config)
    files = Conversions.under(work / "cache", model, model.replace("/", "_"))
    engines = engines_for(module, files, backbone.is_conv)
    photos = photo_batch(work, backbone.data_config, batch)
    outputs = {name: engine(photos) for name, engine in engines.items()}
    rates: dict[str, float] = dict.fromkeys(engines, 0.0)
    for _ in range(rounds):
        for name, engine in engines.items():
            rate = measure(engine, batch, module.input_size, min_seconds=seconds)
            rates[name] = max(rates[name], rate)
    exact = outputs["torch fp32"]
    row = {
        "model": model,
        "weights": MODELS[model],
        "batch": batch,
        "image_size": list(module.input_size),
        "threads": torch.get_num_threads(),
        "bf16_units": openvino_has_bf16(),
        "engines": {
            name: {
                "images_per_s": round(rates[name], 1),
                "min_cosine_to_torch_fp32": min_cosine(outputs[name], exact),
            }
            for name in engines
        },
    }
    print(json.dumps(row), flush=True)
    return row


def generated_pngs(out: Path, n: int, size: int = 256) -> Path:
    """``n`` PNGs (two class folders) cut from scikit-image's photos at random places and
    scales: real image content, so decoding costs what real files cost."""
    import skimage.data

    if out.exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(0)
    photos = [getattr(skimage.data, name)()[..., :3] for name in PHOTOS]
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2])))
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size))
        path = tmp / f"class_{i % 2}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path)
    tmp.rename(out)
    return out


def featpipe_extract(
    data: Path, model: str, cache: Path, extra: list[str], config: str = ""
) -> dict[str, Any]:
    """One ``featpipe extract`` process, timed from outside; its summary line kept.
    ``config``: one of :data:`PATCHED` runs the program with that part switched off."""
    program = (
        [sys.executable, "-c", PATCHED[config] + CONSOLE]
        if config in PATCHED
        else [str(Path(sys.executable).with_name("featpipe"))]
    )
    command = [*program, "extract", str(data), "-b", model, "-w", MODELS[model], *extra]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "--cache-dir", str(cache)], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    lines = [ln for ln in done.stdout.splitlines() if "extracted in" in ln or ln.startswith("note")]
    return {"wall_s": round(wall, 2), "summary": " ".join(lines)}


def drop_entries(cache: Path) -> None:
    """Remove the cache's entries, keep its memos and converted networks: a warm rerun."""
    for folder in cache.iterdir():
        if not folder.name.startswith("."):
            shutil.rmtree(folder)


def conversion_seconds(model: str, work: Path) -> float:
    """One OpenVINO conversion of ``model`` into a fresh folder, as a first run pays it."""
    backbone = build_backbone(BackboneSpec(model, weights=MODELS[model]))
    shutil.rmtree(work / "conversion", ignore_errors=True)
    files = Conversions.under(work / "conversion", model, model.replace("/", "_"))
    start = time.perf_counter()
    export_openvino(Normalized(backbone.module, backbone.data_config), files)
    return round(time.perf_counter() - start, 2)


def whole_process(
    name: str, data: Path, model: str, work: Path, repeats: int, naive: bool
) -> dict[str, Any]:
    """``featpipe extract`` per configuration, warm and alternated; the cold default apart."""
    caches = {config: work / f"cache-{name}-{config.replace(' ', '-')}" for config in CONFIGS}
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    cold = {config: featpipe_extract(data, model, caches[config], flags, config)
            for config, flags in CONFIGS.items()}  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {config: [] for config in CONFIGS}
    recipes: list[dict[str, float]] = []
    for _ in range(repeats):
        for config, flags in CONFIGS.items():
            drop_entries(caches[config])
            runs[config].append(featpipe_extract(data, model, caches[config], flags, config))
        if naive:  # alternated with them: the same machine state
            recipes.append(naive_recipe(data, model, torch.device("cpu")))
    images = sum(1 for p in data.rglob("*.png"))
    row: dict[str, Any] = {"dataset": name, "images": images, "model": model, "configs": {}}
    for config in CONFIGS:
        best = min(runs[config], key=lambda r: r["wall_s"])
        row["configs"][config] = {
            "warm_wall_s": best["wall_s"],
            "warm_images_per_s": round(images / best["wall_s"], 1),
            "warm_walls_s": [r["wall_s"] for r in runs[config]],
            "summary": best["summary"],
            "cold_wall_s": cold[config]["wall_s"],
            "cold_summary": cold[config]["summary"],
        }
    if naive:  # the best of each measure, as for featpipe's rows
        row["naive_recipe_images_per_s"] = round(max(r["images_per_s"] for r in recipes), 1)
        row["naive_recipe_wall_s"] = round(min(r["wall_s"] for r in recipes), 2)
        row["naive_recipe_walls_s"] = [round(r["wall_s"], 2) for r in recipes]
        default = row["configs"]["default"]
        # whole process against whole process (the goal's measure), and featpipe's whole
        # process against the naive loop alone (its imports, build and exit left out)
        row["default_vs_naive_whole"] = round(
            row["naive_recipe_wall_s"] / default["warm_wall_s"], 2
        )
        row["default_vs_naive_loop"] = round(
            default["warm_images_per_s"] / row["naive_recipe_images_per_s"], 2
        )
    print(json.dumps(row), flush=True)
    return row


class Stopwatch:
    """Exclusive seconds per part of a call: featpipe's own functions, wrapped in place while
    :meth:`wrapped` is open. A part that runs inside another (decoding inside the transform)
    counts for itself only, so the parts never overlap and add up to at most the wall."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list[float]] = []  # [start, seconds of wrapped parts inside]

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                start, inner = self._stack.pop()
                elapsed = time.perf_counter() - start
                self.seconds[part] = self.seconds.get(part, 0.0) + elapsed - inner
                if self._stack:
                    self._stack[-1][1] += elapsed

        return run

    @contextlib.contextmanager
    def wrapped(self) -> Iterator[None]:
        """Time an extraction's parts (see the module docstring) while the block runs."""
        watch = self

        class TimedEngine(OneBatchAtATime):
            def __init__(self, engine: Engine) -> None:
                self.name, self.forward = engine.name, watch.timed("forward", engine)

            def __call__(self, images: torch.Tensor) -> np.ndarray:
                return self.forward(images)

        def build(*args: Any) -> Engine:  # the torch path's engines
            return TimedEngine(self.timed("engine build", build_engine)(*args))

        def openvino(*args: Any) -> Engine:  # the engine of a run without torch
            return TimedEngine(self.timed("engine build", OpenVinoEngine)(*args))

        parts = [
            (stage, "scan", "scan"),
            (stage, "cache_hit", "cache lookup"),
            (stage, "resolve", "settle (key, memo)"),
            (stage, "settled_without_torch", "settle (key, memo)"),
            (settle, "build", "backbone build"),
            (fill, "build", "backbone build"),
            (Contents, "__init__", "fingerprints"),
            (Contents, "hashes", "SHA-256 of written files"),
            (transforms, "load_image", "decode"),  # timm's transform, where EvalPixels is not
            (eval_pixels, "load_image", "decode"),
            (EvalPixels, "__call__", "resize, crop"),
            (ImageToUint8, "__call__", "to tensor"),  # the torch path's, around EvalPixels
            (journals.Journal, "append", "journal write"),
            (journals, "seal", "HDF5 seal"),
            (loader, "collate", "collate"),
            (loader, "collate_arrays", "collate"),
            (tensor_decode, "pil_collate", "collate"),  # the exact path's collate, as bound there
            (rows, "screen", "screening"),
            (Transaction, "commit", "commit"),
        ]
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in parts]
        try:
            for owner, name, part in parts:
                setattr(owner, name, self.timed(part, getattr(owner, name)))
            tuning.build_engine, rows.OpenVinoEngine = build, openvino
            yield
        finally:
            tuning.build_engine, rows.OpenVinoEngine = build_engine, OpenVinoEngine
            for owner, name, original in originals:
                setattr(owner, name, original)


def shares(
    name: str,
    data: Path,
    model: str,
    work: Path,
    workers: list[int],
    repeats: int,
    configs: dict[str, list[str]] = SHARE_CONFIGS,
    **options: Any,
) -> dict[str, Any]:
    """Where a warm ``extract()``'s time goes, per configuration (of :data:`CONFIGS`), and end
    to end per way of decoding against the forward-only ceiling (see the module docstring).
    ``options``: extract options of every run (the weights, say), each configuration's on
    top."""
    row: dict[str, Any] = {"dataset": name, "model": model, "configs": {}}
    for config, flags in configs.items():
        pairs = dict(zip(flags[::2], flags[1::2], strict=True))
        overrides = options | {f.removeprefix("--").replace("-", "_"): v for f, v in pairs.items()}
        cache = work / f"cache-shares-{name}-{config.replace(' ', '-')}"
        shutil.rmtree(cache, ignore_errors=True)
        in_process(data, model, cache, overrides, 0)  # cold: conversions, the probe's memo
        watch = Stopwatch()
        with watch.wrapped(), decoding_between_batches():
            result = in_process(data, model, cache, overrides, 0)
        parts = dict(watch.seconds)
        parts["rest"] = max(0.0, result.seconds - sum(parts.values()))
        settings = result.settings
        ways: list[tuple[str, int, Callable[[], Any]]]
        ways = [(str(w), w, decoding_between_batches) for w in workers]
        if 0 in workers:
            after_none = [("0+thread", 0, contextlib.nullcontext)]
            if (settings["engine"], settings["precision"]) == ("openvino", "fp32"):
                after_none.append(("0+thread LATENCY", 0, openvino_latency))
            after_none.append(("0+thread PIL PNGs", 0, pil_png_decoding))
            at = workers.index(0) + 1
            ways[at:at] = after_none
        ends: dict[str, list[float]] = {label: [] for label, _, _ in ways}
        for _ in range(repeats):
            for label, w, way in ways:  # alternated: a noisy moment hits each alike
                with way():
                    ends[label].append(
                        in_process(data, model, cache, overrides, w).images_per_second
                    )
        row["configs"][config] = {
            "engine": settings["engine"],
            "precision": settings["precision"],
            "batch_size": settings["batch_size"],
            "images": result.n_new,
            "wall_s": round(result.seconds, 3),
            "torch_loaded": settings.get("torch_loaded", True),  # False: settle's path without
            "parts_s": {part: round(s, 6) for part, s in parts.items()},
            "shares": {part: round(s / result.seconds, 4) for part, s in parts.items()},
            "images_per_s_by_workers": {w: round(max(r), 1) for w, r in ends.items()},
            "images_per_s_runs": {w: [round(x, 1) for x in r] for w, r in ends.items()},
            "forward_ceiling_images_per_s": round(
                forward_ceiling(model, overrides, settings, work), 1
            ),
        }
        print_shares(name, config, row["configs"][config])
    print(json.dumps(row), flush=True)
    return row


@contextlib.contextmanager
def decoding_between_batches() -> Iterator[None]:
    """Extractions without the prefetch thread while the block runs: with no loader workers,
    each batch is decoded in the main thread between forwards (as before the thread)."""
    original = rows.prefetched
    rows.prefetched = lambda items, ahead: original(items, 0)
    try:
        yield
    finally:
        rows.prefetched = original


@contextlib.contextmanager
def pil_png_decoding() -> Iterator[None]:
    """PIL decodes every PNG while the block runs (libspng off: as before it, and where pyspng
    has no wheel); the same pixels."""
    original = images.pyspng
    images.pyspng = None
    try:
        yield
    finally:
        images.pyspng = original


@contextlib.contextmanager
def openvino_latency() -> Iterator[None]:
    """OpenVINO fp32 with the ``LATENCY`` hint (:class:`OpenVinoLatency`, one stream, one
    request per batch) in extractions while the block runs: the hint featpipe's engine was
    chosen against, in the loop where it was chosen."""
    original = tuning.build_engine

    def build(settings: dict[str, Any], module: Normalized, device: Any, files: Any) -> Engine:
        if settings["engine"] != "openvino":
            return original(settings, module, device, files)
        export_openvino(module, files)
        return OpenVinoLatency(files, torch.get_num_threads())

    # the torch path builds its engine by its settings; a run without torch makes OpenVINO's
    tuning.build_engine = build
    rows.OpenVinoEngine = lambda files, precision, threads: OpenVinoLatency(files, threads)
    try:
        yield
    finally:
        tuning.build_engine, rows.OpenVinoEngine = original, OpenVinoEngine


def in_process(data: Path, model: str, cache: Path, options: dict[str, Any], workers: int) -> Any:
    """One warm ``extract()`` in this process: the cache's entries dropped first, its memos and
    converted networks kept."""
    if cache.exists():
        drop_entries(cache)
    return extract(data, model, cache_dir=cache, workers=workers, **options)


def forward_ceiling(
    model: str, options: dict[str, Any], settings: dict[str, Any], work: Path
) -> float:
    """Forward-only images/s of the engine, precision and batch size an extraction ran with
    (``options``: its extract options), its network converted once under ``work``."""
    spec = ExtractOptions().merged(options).spec(model)
    backbone = build_backbone(spec)
    module = Normalized(backbone.module, backbone.data_config)
    stem = f"{spec.slug}-{'x'.join(map(str, module.input_size))}"
    files = Conversions.under(work / "cache-ceiling", model, stem)
    engine = build_engine(settings, module, torch.device("cpu"), files)
    return measure(engine, int(settings["batch_size"]), module.input_size, windows=3)


def print_shares(name: str, config: str, record: dict[str, Any]) -> None:
    ran = f"{record['engine']} {record['precision']}, batch {record['batch_size']}"
    print(f"\n{name}, {config} ({ran}): {record['images']} images in {record['wall_s']} s")
    for part, share in sorted(record["shares"].items(), key=lambda kv: -kv[1]):
        print(f"  {part:<28} {100 * share:5.1f} %  {record['parts_s'][part]:8.3f} s")
    ceiling = record["forward_ceiling_images_per_s"]
    for w, rate in record["images_per_s_by_workers"].items():
        print(f"  workers {w}: {rate} img/s end to end, {rate / ceiling:.2f} of the forward-only "
              f"ceiling ({ceiling} img/s)")  # fmt: skip


PARTS = ("ceiling", "whole", "shares")


def choices(value: str, allowed: Iterable[str], flag: str) -> list[str]:
    """A comma-joined subset of ``allowed``, in the order given."""
    picked = [v.strip() for v in value.split(",") if v.strip()]
    for v in picked:
        if v not in allowed:
            raise argparse.ArgumentTypeError(f"{flag} {v}: choose from {', '.join(allowed)}")
    return picked


def run(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts {unknown[0]}: choose from {', '.join(PARTS)}")
    models = ["tf_efficientnet_lite0"] if args.smoke else list(MODELS)
    batch, rounds, seconds = (4, 1, 0.2) if args.smoke else (32, args.rounds, args.seconds)
    model = "tf_efficientnet_lite0"
    results: dict[str, Any] = {}
    if "ceiling" in parts:
        results["ceiling"] = [ceiling(m, work, batch, rounds, seconds) for m in models]
        results["conversion_s"] = {model: conversion_seconds(model, work)}
    n, per_class = (24, 6) if args.smoke else (args.n, None)
    datasets = {}
    if "pngs" in args.datasets:
        pngs = args.pngs or generated_pngs(work / f"pngs-{n}", n)
        datasets[pngs.name] = pngs
    if "elpv" in args.datasets:
        elpv = prepare_dataset("elpv", work / ("elpv-smoke" if args.smoke else "elpv"), per_class)
        datasets[elpv.name] = elpv
    repeats = 1 if args.smoke else args.repeats
    if "whole" in parts:
        results["whole_process"] = [
            whole_process(name, data, model, work, repeats, naive=True)
            for name, data in datasets.items()
        ]
    if "shares" in parts:
        workers = [int(w) for w in args.workers.split(",")]
        configs = {c: SHARE_CONFIGS[c] for c in args.configs}
        results["shares"] = [
            shares(name, data, model, work, workers, repeats, configs, weights=MODELS[model])
            for name, data in datasets.items()
        ]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / "out" / "engines")
    parser.add_argument("--json", type=Path, help="Write the results here (e.g. results/...).")
    parser.add_argument("--smoke", action="store_true", help="Every part tiny: mechanics only.")
    parser.add_argument("--rounds", type=int, default=3, help="Ceiling: best of this many.")
    parser.add_argument("--seconds", type=float, default=3.0, help="Ceiling: each window.")
    parser.add_argument("--repeats", type=int, default=3, help="Whole process: best of these.")
    parser.add_argument("--parts", default=",".join(PARTS), help="Some of " + ",".join(PARTS))
    parser.add_argument("--n", type=int, default=3000, help="Generated PNGs (without --pngs).")
    parser.add_argument("--pngs", type=Path, help="An ImageFolder of PNGs instead of generated.")
    parser.add_argument(
        "--workers", default="0,1", help="Shares: the loader worker counts run end to end."
    )
    parser.add_argument(
        "--configs",
        type=lambda v: choices(v, SHARE_CONFIGS, "--configs"),
        default=list(SHARE_CONFIGS),
        help="Shares: some of " + ", ".join(SHARE_CONFIGS),
    )
    parser.add_argument(
        "--datasets",
        type=lambda v: choices(v, ("pngs", "elpv"), "--datasets"),
        default=["pngs", "elpv"],
        help="Whole process and shares: pngs, elpv or both",
    )
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    record = {
        "section": "engines",
        "date": started,
        "machine": f"{machine_signature().split('|')[1]}, {platform.system()}, "
        f"torch {torch.__version__}",
        "command": "python benchmarks/bench_engines.py " + " ".join(sys.argv[1:]),
        "results": run(args),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
