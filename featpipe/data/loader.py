"""A DataLoader over image files that never dies on one bad file.

Each worker decodes, resizes and crops; a file that fails becomes a recorded reason instead of
an exception, so a corrupt JPEG in hour three costs one row, not the run. Batches keep dataset
order (the cache writes rows in the order they come).

Torch-free at import: a run without torch (:func:`featpipe.extraction.settle.
runs_without_torch`) batches numpy images with :func:`in_order` and :func:`collate_arrays`;
torch is loaded where a tensor or a ``DataLoader`` is made.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from featpipe.data.images import ImageDecodeError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader


@dataclass
class Batch:
    """Decoded images with the positions they came from, plus the positions that failed."""

    images: Any  # uint8 [B, 3, H, W]: a torch tensor, or a numpy array in a run without torch
    index: list[int]
    failed: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        self.images = self.images.pin_memory()
        return self


class ImageFiles:
    """Paths → (position, decoded image or None, reason): a map-style dataset for
    ``DataLoader`` or :func:`in_order`."""

    def __init__(self, paths: Sequence[str], transform: Callable[[str], Any]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        try:
            return i, self.transform(self.paths[i]), ""
        except ImageDecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # anything PIL or a transform raises names the file, not us
            return i, None, f"{type(exc).__name__}: {exc}"


def stack(images: list[torch.Tensor]) -> torch.Tensor:
    """[B, C, H, W] from C×H×W images, in the memory layout they arrive in.

    PIL's pixels arrive channels-last (a C×H×W view of H×W×C bytes). Stacked as NCHW, torch
    gathers them byte by byte; stacked as channels-last they are a plain copy: 32 Lite0 images of
    224 px took 0.4 against 57 ms (best of 5, one loaded 2-core EPYC), 12% of a warm OpenVINO
    extraction before (``bench_engines.py --parts shares``). The values are the same; torch's
    channels_last engines take this layout as it is, the others make it contiguous.
    """
    import torch

    if all(t.permute(1, 2, 0).is_contiguous() for t in images):
        return torch.stack([t.permute(1, 2, 0) for t in images]).permute(0, 3, 1, 2)
    return torch.stack(images)


def collate(samples: list[tuple[int, torch.Tensor | None, str]]) -> Batch:
    import torch

    ok = [(i, t) for i, t, _ in samples if t is not None]
    failed = [(i, reason) for i, t, reason in samples if t is None]
    images = stack([t for _, t in ok]) if ok else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    return Batch(images, [i for i, _ in ok], failed)


def collate_arrays(samples: list[tuple[int, np.ndarray | None, str]]) -> Batch:
    """:func:`collate` of H×W×C ``uint8`` arrays (C 1 or 3), without torch, into the contiguous
    N×C×H×W batch OpenVINO takes: one copy per image, and a grey image's plane copied three
    times (interleaved into H×W×3 first, ELPV's grey batches of 8 took 1.71 ms to collate and
    lay out for the engine; written as planes, 0.03 ms: 300 rounds each, 2-core Xeon)."""
    ok = [(i, a) for i, a, _ in samples if a is not None]
    failed = [(i, reason) for i, a, reason in samples if a is None]
    if not ok:
        return Batch(np.empty((0, 3, 1, 1), np.uint8), [], failed)
    height, width = ok[0][1].shape[:2]
    images = np.empty((len(ok), 3, height, width), np.uint8)
    for k, (_, pixels) in enumerate(ok):
        images[k] = pixels.transpose(2, 0, 1)  # a grey plane broadcasts to the three
    return Batch(images, [i for i, _ in ok], failed)


def in_order(
    paths: Sequence[str], transform: Callable[[str], Any], batch_size: int
) -> Iterator[Batch]:
    """Batches of :func:`collate_arrays` in dataset order, decoded in this process: what
    ``DataLoader`` without workers does, without loading torch."""
    files = ImageFiles(paths, transform)
    for start in range(0, len(files), batch_size):
        stop = min(start + batch_size, len(files))
        yield collate_arrays([files[i] for i in range(start, stop)])


def make_loader(
    paths: Sequence[str],
    transform: Callable[[str], Any],
    batch_size: int,
    workers: int,
    pin_memory: bool,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    collate_fn: Callable[[list], Batch] = collate,
) -> DataLoader:
    """Ordered batches for extraction; ``shuffle`` with a seeded ``generator`` for training
    (the generator also seeds the workers, so augmentation is reproducible). The tensor decode
    path passes its own ``transform`` and ``collate_fn`` (:mod:`featpipe.data.tensor_decode`)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        ImageFiles(paths, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )


T = TypeVar("T")


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``items`` in order, produced up to ``depth`` ahead by a thread (0: no thread).

    With no loader workers (featpipe's choice on 2 cores) the next batch then decodes while the
    engine runs on this one: PIL's decoders and resamplers, torch and OpenVINO release the GIL,
    so the two overlap where the engine's threads leave a core idle, without a worker process
    and its copies. An exception of ``items`` is raised here, at the place it would have come;
    a consumer that stops early stops the thread after the item it is producing.
    """
    if depth == 0:
        yield from items
        return
    ready: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((False, item)):
                    return
            put((True, None))
        except BaseException as exc:  # raised again in the consumer's thread
            put((True, exc))

    thread = threading.Thread(target=produce, name="featpipe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            done, value = ready.get()
            if done:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        thread.join()
