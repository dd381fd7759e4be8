"""What the speed options cost in fidelity: JPEG draft decoding and bf16, on real photos.

Real photos from scikit-image, written as JPEG files the way users have them: every colour photo
of at least 400 px short side, re-encoded at 512×512 (quality 90), plus the large originals
(retina 1411 px, Hubble 872 px) at native size. For each setting, the embeddings featpipe
caches (Lite0, offline weights) are compared with a plain timm pipeline (``create_model`` +
``resolve_data_config`` + ``create_transform``, fp32); decoding speed is the time of
featpipe's per-image transform (decode, resize, crop) with and without draft decoding.

    python benchmarks/bench_fidelity.py --work /tmp/fidelity
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import skimage.data
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from featpipe.backbones.build import load_classifier
from featpipe.backbones.spec import BackboneSpec
from featpipe.data.transforms import ImageToUint8
from featpipe.extraction.stage import extract

PHOTOS = (
    "astronaut",
    "coffee",
    "rocket",
    "chelsea",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
BIG = ("retina", "hubble_deep_field", "stereo_motorcycle")


def _rgb(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    return image[0] if isinstance(image, tuple) else image


def write_photos(root: Path) -> tuple[Path, Path]:
    """``root/512`` (every photo at 512×512) and ``root/big`` (large originals)."""
    small, big = root / "512", root / "big"
    small.mkdir(parents=True, exist_ok=True)
    big.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        image = Image.fromarray(_rgb(name)).convert("RGB")
        scale = 512 / min(image.size)
        resized = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.LANCZOS
        )
        left, top = (resized.width - 512) // 2, (resized.height - 512) // 2
        resized.crop((left, top, left + 512, top + 512)).save(small / f"{name}.jpg", quality=90)
        if name in BIG:
            image.save(big / f"{name}.jpg", quality=90)
    return small, big


def timm_reference(paths: list[Path]) -> np.ndarray:
    """Plain timm: the model's own transform, forward_features and the model's own pooling."""
    model = load_classifier(BackboneSpec("tf_efficientnet_lite0", "offline")).model
    config = resolve_data_config({}, model=timm.create_model("tf_efficientnet_lite0"))
    transform = create_transform(**config)
    with torch.inference_mode():
        x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def cached(folder: Path, cache: Path, **options) -> dict[str, np.ndarray]:
    result = extract(
        folder,
        "tf_efficientnet_lite0",
        weights="offline",
        engine="torch",
        batch_size=8,
        workers=0,
        cache_dir=cache,
        **options,
    )
    features = result.load()
    return dict(zip(features.relpath, features.X, strict=True))


def decode_ms(paths: list[Path], draft: bool, repeats: int) -> float:
    config = load_classifier(BackboneSpec("tf_efficientnet_lite0", "offline")).data_config
    transform = ImageToUint8(config, draft)
    best = float("inf")
    for _ in range(repeats):  # best of N: the least disturbed by other load on the machine
        t0 = time.perf_counter()
        for p in paths:
            transform(str(p))
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/fidelity"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="also compare bf16 with fp32")
    args = parser.parse_args()
    small, big = write_photos(args.work / "photos")
    cache = args.work / "cache"
    for folder in (small, big):
        paths = sorted(folder.glob("*.jpg"))
        reference = dict(zip([p.name for p in paths], timm_reference(paths), strict=True))
        settings = {"default": {"precision": "fp32"}, "draft": {"precision": "fp32", "draft": True}}
        if args.bf16:
            settings["bf16"] = {"precision": "bf16"}
        rows = {name: cached(folder, cache, **options) for name, options in settings.items()}
        print(f"\n{folder} ({len(paths)} JPEG photos)")
        for name, got in rows.items():
            names = sorted(got)
            c = cosines(np.stack([got[n] for n in names]), np.stack([reference[n] for n in names]))
            print(f"  {name:8s} cos to plain timm fp32: min {c.min():.8f} mean {c.mean():.8f}")
        if "bf16" in rows:
            names = sorted(rows["bf16"])
            c = cosines(*(np.stack([rows[k][n] for n in names]) for k in ("bf16", "default")))
            print(f"  bf16 vs fp32 cached: min {c.min():.6f} mean {c.mean():.6f}")
        exact, draft = (decode_ms(paths, d, args.repeats) for d in (False, True))
        print(
            f"  decode+resize+crop per image: exact {exact:.2f} ms, draft {draft:.2f} ms "
            f"({exact / draft:.2f}x)"
        )


if __name__ == "__main__":
    main()
