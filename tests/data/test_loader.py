"""The loader's batches: the same pixels whatever layout the images arrive in, stacked without
torch's byte-by-byte gather when they come channels-last (as PIL's do)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featpipe.data.eval_pixels import EvalPixels
from featpipe.data.loader import collate, collate_arrays, in_order, prefetched, stack
from featpipe.data.transforms import ImageToUint8
from featpipe.runtime.engines import Normalized, TorchEngine

CONFIG = {
    "input_size": (3, 16, 16),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
}


def pil_images(tmp_path: Path, modes: tuple[str, ...]) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    out = []
    for i, mode in enumerate(modes):
        pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).convert(mode).save(path)
        out.append(ImageToUint8(CONFIG, False)(str(path)))
    return out


def test_pil_images_are_stacked_channels_last_with_the_same_pixels(tmp_path: Path) -> None:
    images = pil_images(tmp_path, ("RGB", "RGB", "RGB"))
    assert not images[0].is_contiguous()  # PIL's bytes, seen as C×H×W: what makes this matter
    batch = collate([(i, t, "") for i, t in enumerate(images)]).images
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.uint8
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, torch.stack(images))


def test_other_layouts_are_stacked_as_before(tmp_path: Path) -> None:
    mixed = pil_images(tmp_path, ("RGB", "L"))  # a grayscale image is one band, expanded
    assert torch.equal(stack(mixed), torch.stack(mixed))
    plain = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(2)]
    assert stack(plain).is_contiguous() and torch.equal(stack(plain), torch.stack(plain))


def test_the_torch_engine_gives_the_same_rows_for_either_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    module = Normalized(torch.nn.Sequential(net, torch.nn.Flatten()), CONFIG)
    images = pil_images(tmp_path, ("RGB", "RGB"))
    for channels_last in (True, False):
        engine = TorchEngine(module, torch.device("cpu"), "fp32", channels_last)
        assert np.array_equal(engine(stack(images)), engine(torch.stack(images)))


def test_arrays_collate_to_the_torch_paths_batch_as_one_contiguous_nchw_array(
    tmp_path: Path,
) -> None:
    """The run without torch batches EvalPixels' arrays: the same values as the torch path's
    batch, grey made three channels, failures passed on, in the layout OpenVINO takes."""
    pil_images(tmp_path, ("RGB", "L", "RGB"))  # writes 0.png, 1.png, 2.png
    (tmp_path / "3.png").write_bytes(b"not a png")
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    [batch] = list(in_order(paths, EvalPixels(CONFIG, False), batch_size=4))
    images = [ImageToUint8(CONFIG, False)(p) for p in paths[:3]]
    assert isinstance(batch.images, np.ndarray) and batch.images.flags.c_contiguous
    assert batch.images.shape == (3, 3, 16, 16) and batch.images.dtype == np.uint8
    np.testing.assert_array_equal(batch.images, torch.stack(images).numpy())
    assert batch.index == [0, 1, 2] and [i for i, _ in batch.failed] == [3]
    empty = collate_arrays([(0, None, "unreadable")])
    assert empty.index == [] and empty.failed == [(0, "unreadable")]


def test_prefetched_keeps_order_and_runs_ahead_in_a_thread() -> None:
    produced: list[tuple[int, str]] = []

    def items():
        for i in range(6):
            produced.append((i, threading.current_thread().name))
            yield i

    out = prefetched(items(), depth=2)
    assert next(out) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    # the item taken, two waiting in the queue and one waiting to enter it: no further
    assert len(produced) == 4
    assert list(out) == [1, 2, 3, 4, 5]
    assert {name for _, name in produced} == {"featpipe-prefetch"}
    assert list(prefetched(iter(range(4)), depth=0)) == [0, 1, 2, 3]  # 0: inline


def test_prefetched_raises_where_the_item_would_have_come_and_stops_when_closed() -> None:
    def failing():
        yield 1
        raise ValueError("bad.png: cannot decode")

    out = prefetched(failing())
    assert next(out) == 1
    with pytest.raises(ValueError, match="cannot decode"):
        next(out)

    pulled = []

    def endless():
        i = 0
        while True:
            pulled.append(i)
            yield i
            i += 1

    out = prefetched(endless(), depth=1)
    assert next(out) == 0
    out.close()  # joins the thread: it stops after the item it was producing
    n = len(pulled)
    time.sleep(0.1)
    assert len(pulled) == n and n <= 3
    assert not any(t.name == "featpipe-prefetch" for t in threading.enumerate())
