"""Shared fixtures: tiny synthetic image trees, a tiny timm model, real photos."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featpipe.cache.entry as entry_module
import featpipe.cache.fingerprints as fingerprints
import featpipe.cache.statrecord as statrecord
import featpipe.data.datasets as datasets

# A tiny timm model with random weights: mechanics only, never correctness of features.
TINY = {
    "backbone": "test_efficientnet",
    "weights": "none",
    "image_size": 32,
    "engine": "torch",
    "precision": "fp32",
    "batch_size": 4,
    "workers": 0,
}


# TINY's extraction options alone: what fit, finetune and compare take beside their backbone.
TINY_EXTRACT = {k: v for k, v in TINY.items() if k != "backbone"}

# The same settings for a resnet18 that runs long enough to be killed mid-way.
SLOW = TINY | {"backbone": "resnet18", "image_size": 64}

# A fine-tune of the tiny model (FinetuneConfig fields): mechanics only.
TINY_FINETUNE = {
    "backbone": "test_efficientnet",
    "weights": "none",
    "image_size": 32,
    "epochs": 2,
    "batch_size": 8,
    "lr": 0.05,
    "augment": False,
}

# A 32 px model's data config, for transforms tested without building a model.
DATA_CONFIG_32 = {
    "input_size": (3, 32, 32),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def kill_after_first_checkpoint(
    options: dict, data: Path, out: Path, timeout: float, checkpoint: str = "checkpoint.pt"
) -> None:
    """Fine-tune ``data`` with ``options`` (FinetuneConfig fields) into ``out`` in a child
    process, and SIGKILL it as soon as its first ``checkpoint`` (under ``out``; the refit's is
    ``refit/checkpoint.pt``) exists: the caller resumes it."""
    code = (
        "import sys; from featpipe.finetuning.config import FinetuneConfig;"
        "from featpipe.finetuning.stage import finetune;"
        f"finetune(sys.argv[1], FinetuneConfig(**{options!r}), "
        "__import__('pathlib').Path(sys.argv[2]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(data), str(out)])
    deadline = time.monotonic() + timeout
    while not (out / checkpoint).exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# The installed console script, as a person runs it in a terminal.
FEATPIPE = Path(sys.executable).with_name("featpipe")


def console_script(
    *args: object, columns: int | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``featpipe *args`` (each passed through ``str``) in a subprocess, its output captured
    as text; a non-zero exit status is the caller's to check. ``columns`` sets ``COLUMNS``, the
    width its tables are laid out for; without it the child has none (see ``plain_terminal``)."""
    env = None if columns is None else os.environ | {"COLUMNS": str(columns)}
    return subprocess.run(
        [str(FEATPIPE), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def main_in_new_process(*args: object) -> subprocess.CompletedProcess[str]:
    """featpipe's ``main(args)`` in a fresh interpreter, output captured: its stdout ends with
    ``TORCH`` or ``NO-TORCH`` (whether the call imported torch) and the exit code."""
    script = (
        "import sys; from featpipe.cli.app import main; code = main(sys.argv[1:]); "
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)"
    )
    command = [sys.executable, "-c", script, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now: a rendezvous for rank processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int, *args: str) -> list[str]:
    """The command that runs ``featpipe *args`` as ``n`` ranks under torchrun on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={n}",
        f"--master-port={free_port()}",
        "-m",
        "featpipe",
        *args,
    ]


def rank_env(rank: int, world: int, port: str) -> dict[str, str]:
    """This process's environment plus what torchrun gives rank ``rank`` of ``world`` (one
    node, the rendezvous on 127.0.0.1:``port``)."""
    return os.environ | {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
    }


def flags(options: dict) -> list[str]:
    """Library keyword arguments as CLI flags (``batch_size`` → ``--batch-size``)."""
    out: list[str] = []
    for key, value in options.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 48), fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, fmt)
    return path


def make_tree(
    root: Path,
    classes: tuple[str, ...] = ("ants", "bees"),
    per_class: int = 6,
    split: str | None = None,
    seed: int = 0,
) -> Path:
    """An ImageFolder tree of random RGB PNGs (optionally under a split folder)."""
    base = root / split if split else root
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(base / name / f"{name}_{i:03d}.png", seed=seed * 1000 + c * 100 + i)
    return root


def split_tree(root: Path) -> Path:
    """Three classes in train (10 a class), val (4) and test (5) folders, each split seeded
    apart."""
    make_tree(root, classes=("a", "b", "c"), per_class=10, split="train", seed=0)
    make_tree(root, classes=("a", "b", "c"), per_class=4, split="val", seed=1)
    return make_tree(root, classes=("a", "b", "c"), per_class=5, split="test", seed=2)


def colour_tree(root: Path, per_class: int = 12) -> Path:
    """Classes told apart by colour: even random-init features separate them."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(per_class):
            pixels = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            pixels[..., c] += 180
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(autouse=True)
def plain_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with the environment of output piped to a file: no ``COLUMNS`` and no
    ``LINES``. The CLI lays piped output out 160 columns wide unless ``COLUMNS`` says otherwise,
    and the tests that read its tables expect that width (those that need another set it). A
    shell may export ``COLUMNS``, and a pytest-xdist worker has COLUMNS=80 and LINES=24."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tiny")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scikit-image's real photos (chelsea the cat, a cup of coffee) as JPEG files."""
    import skimage.data

    out = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee", "astronaut"):
        paths[name] = out / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).save(paths[name], quality=95)
    return paths


@pytest.fixture(scope="session")
def tiny_openvino(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """``seed(cache_dir)``: put the TINY network's OpenVINO IR and compiled blob into a cache
    directory, as an earlier run there would have left them. One conversion takes seconds (more
    on a loaded machine); tests of what runs on the IR need not pay it each."""
    from featpipe.extraction.stage import extract

    made = tmp_path_factory.mktemp("openvino-seed")
    extract(make_tree(made / "data", per_class=1), cache_dir=made, **TINY | {"engine": "openvino"})

    def seed(cache_dir: Path) -> Path:
        shutil.copytree(made / ".openvino", cache_dir / ".openvino", dirs_exist_ok=True)
        return cache_dir

    return seed


class CacheChecks:
    """What a call's cache check costs, counted from the moment it is made: dataset scans,
    dataset files whose content is read (quick fingerprint or full hash), and entry checksums
    by entry file. The entries' once-per-process checksum memory starts empty, as in a fresh
    process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scans: list[tuple] = []
        self.reads: list[Path] = []
        self.checksums: Counter[str] = Counter()
        scan_folder, checksum_ok = datasets._scan_folder, entry_module.checksum_ok
        quick, full = fingerprints.quick_fingerprint, fingerprints.full_hash
        monkeypatch.setattr(entry_module, "_VERIFIED", {})
        monkeypatch.setattr(
            datasets, "_scan_folder", lambda *a: self.scans.append(a) or scan_folder(*a)
        )
        monkeypatch.setattr(
            fingerprints, "quick_fingerprint", lambda p: self.reads.append(p) or quick(p)
        )
        monkeypatch.setattr(fingerprints, "full_hash", lambda p: self.reads.append(p) or full(p))
        monkeypatch.setattr(
            entry_module,
            "checksum_ok",
            lambda f: self.checksums.update([f.filename]) or checksum_ok(f),
        )

    def paid_once(self, checksummed: int) -> None:
        """One scan, no file read, ``checksummed`` entries checksummed once each (the others
        not at all: an earlier process verified them and recorded it beside them)."""
        assert len(self.scans) == 1 and self.reads == [], (self.scans, self.reads)
        assert len(self.checksums) == checksummed, self.checksums
        assert set(self.checksums.values()) <= {1}, self.checksums


def forget_verified(cache_dir: Path) -> None:
    """Remove what earlier processes recorded of the entries' checksums (entry.verified)."""
    for marker in cache_dir.rglob(entry_module.VERIFIED_NAME):
        marker.unlink()


@pytest.fixture
def settled_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 3-class tree of 24 images whose stats the stat rule records at once (a test's files
    are milliseconds old: no racy window)."""
    monkeypatch.setattr(statrecord, "RACY_NS", 0)
    return make_tree(tmp_path / "shapes", classes=("a", "b", "c"), per_class=8)


@pytest.fixture
def losses(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every call of the fine-tune trainer's loss, as (outputs, targets, whether it trains: a
    training step's outputs carry gradients, the value)."""
    import featpipe.finetuning.trainer as trainer_module

    loss = trainer_module._loss
    calls: list[tuple] = []

    def recorded(out, y, task, smoothing=0.0):
        value = loss(out, y, task, smoothing)
        calls.append((out.detach(), y, out.requires_grad, value.detach()))
        return value

    monkeypatch.setattr(trainer_module, "_loss", recorded)
    return calls
