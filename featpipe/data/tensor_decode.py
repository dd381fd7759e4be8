"""The tensor decode path: JPEG bytes decoded in batches on the extraction device.

PIL decoding in DataLoader workers is what kept whole extraction at 0.23-0.45 of the forward-only
ceiling on an H100 (issue 14). With ``decode="tensor"`` the workers only read each file's bytes
and parse its header; the main process decodes the batch with torchvision's batched
``decode_jpeg`` on the device the model runs on (nvJPEG on CUDA, libjpeg-turbo on the CPU),
turns each image upright, and resizes and centre-crops it with the same geometry as the PIL
transform (read from timm's own eval transform, so the sizes and crop offsets are the same
numbers) and the model's interpolation, antialiased. Normalisation stays the engine's.

Files the tensor decoder should not take go through the exact PIL path in the workers, in the
same run and the same batch: anything that is not a baseline 8-bit RGB or grayscale JPEG
(PNG, CMYK, progressive, 16-bit), files without an end-of-image marker (truncated: PIL refuses
them, and nvJPEG may not), and any file whose device decode fails. Their skip reasons are the
PIL path's own, so ``on_error`` works unchanged.

The pixels differ from PIL's resize at interpolation level, so the decoder is part of the
transform fingerprint (:func:`fingerprint`) and so of the cache key; ``pil`` adds nothing, which
keeps every existing key as it was.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as tv_transforms
from torchvision.transforms.v2 import functional as F

from featpipe.data import images
from featpipe.data.loader import Batch, ImageFiles
from featpipe.data.loader import collate as pil_collate
from featpipe.data.transforms import ImageToUint8
from featpipe.errors import ArgumentError

Step = Callable[[torch.Tensor], torch.Tensor]  # one resize or crop of the tensor geometry
EXIF_ORIENTATION = 0x0112
END_OF_IMAGE = b"\xff\xd9"


def fingerprint(decode: str) -> dict[str, Any]:
    """The decoder's entry in the transform fingerprint: nothing for the exact PIL path (so
    existing cache keys stay valid), the decoder and resizer for the tensor path."""
    return {} if decode == "pil" else {"decode": "tensor:torchvision.decode_jpeg+resize_aa"}


@dataclass
class JpegBytes:
    """A JPEG the tensor decoder takes: its bytes and its EXIF orientation (1-8).

    The bytes stay a ``bytearray`` on their way from a worker: pickled inline with the batch,
    where tensors would each get a shared-memory segment of their own.
    """

    data: bytearray
    orientation: int

    @property
    def tensor(self) -> torch.Tensor:
        """The bytes as the 1-D ``uint8`` CPU tensor ``decode_jpeg`` takes (no copy)."""
        return torch.frombuffer(self.data, dtype=torch.uint8)


def read_jpeg(path: str) -> JpegBytes | None:
    """The file's bytes if it is a JPEG the tensor path decodes exactly like PIL, else None.

    Only the header is parsed (PIL's ``open`` is lazy), so this costs a read, not a decode.
    Anything unusual returns None and goes the PIL way, which knows every reason to refuse it.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        with Image.open(io.BytesIO(data)) as img:
            usable = (
                img.format == "JPEG"
                and img.mode in ("RGB", "L")
                and not img.info.get("progressive")
                and img.width * img.height <= images.MAX_PIXELS
                and data.rstrip(b"\0").endswith(END_OF_IMAGE)
            )
            orientation = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # unreadable or not an image: PIL's path gives the reason
        return None
    if not usable or orientation not in range(1, 9):
        return None
    return JpegBytes(bytearray(data), orientation)


class BytesOrPil:
    """The worker's half of the tensor path: a JPEG's bytes, or the PIL path's ``uint8``
    tensor for a file the tensor decoder does not take. Picklable for workers."""

    def __init__(self, pil: ImageToUint8) -> None:
        self.pil = pil

    def __call__(self, path: str) -> JpegBytes | torch.Tensor:
        raw = read_jpeg(path)
        return raw if raw is not None else self.pil(path)


@dataclass
class BytesBatch(Batch):
    """A loader batch on the tensor path: PIL-decoded fallbacks in ``images``/``index``, and
    the JPEGs still to decode in ``raw`` (position in the dataset, bytes)."""

    raw: list[tuple[int, JpegBytes]] = field(default_factory=list)


def collate(samples: list[tuple[int, JpegBytes | torch.Tensor | None, str]]) -> BytesBatch:
    raw = [(i, item) for i, item, _ in samples if isinstance(item, JpegBytes)]
    decoded = [(i, t) for i, t, _ in samples if isinstance(t, torch.Tensor)]
    failed = [(i, reason) for i, t, reason in samples if t is None]
    stacked = (
        torch.stack([t for _, t in decoded])
        if decoded
        else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    )
    return BytesBatch(stacked, [i for i, _ in decoded], failed, raw)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``image`` [C, H, W] turned the way ``PIL.ImageOps.exif_transpose`` turns it."""
    if orientation in (2, 4):
        return image.flip(-1 if orientation == 2 else -2)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation in (5, 7):  # transpose; transverse is transpose then a half turn
        turned = image.transpose(-2, -1)
        return turned.flip(-2, -1) if orientation == 7 else turned
    if orientation in (6, 8):  # PIL's ROTATE_270 / ROTATE_90, counter-clockwise
        return torch.rot90(image, k=-1 if orientation == 6 else 1, dims=(-2, -1))
    return image


def geometry(pil_transform: Callable) -> list[Step]:
    """The tensor twin of timm's eval transform: each resize and centre crop with the same
    arguments (torchvision computes the output size and the crop offsets by one rule for PIL
    images and tensors), the resize antialiased like PIL's. A step without a twin (timm's
    ``border`` crop mode) refuses the tensor path rather than guess."""
    steps: list[Step] = []
    for step in getattr(pil_transform, "transforms", [pil_transform]):
        if isinstance(step, tv_transforms.Resize):
            steps.append(
                lambda x, s=step: F.resize(
                    x, s.size, s.interpolation, max_size=s.max_size, antialias=True
                )
            )
        elif isinstance(step, tv_transforms.CenterCrop):
            steps.append(lambda x, s=step: F.center_crop(x, list(s.size)))
        elif type(step).__name__ not in ("MaybePILToTensor", "PILToTensor", "ToNumpy"):
            raise ArgumentError(
                "decode",
                f"tensor: the model's eval transform has a step without a tensor twin "
                f"({type(step).__name__}); use pil",
            )
    return steps


def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """RGB ``uint8`` [3, H, W] images on ``device``, decoded as one batch; when the batch fails
    (the call returns nothing then), one by one, so that one bad file costs its own row only
    (None marks it)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 → torchcodec
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for one in data:
                try:
                    out.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def shape(images: torch.Tensor, steps: list[Step]) -> torch.Tensor:
    """Same-sized upright images [N, 3, H, W] through the :func:`geometry` steps."""
    for step in steps:
        images = step(images)
    return images


def decode_on_device(device: torch.device) -> bool:
    """Where the tensor path decodes: on a GPU in the main process (batched, on the device);
    on the CPU in the loader's workers, one file each. On the CPU the workers are the cores:
    decoding only, on 2 cores, tensor in 2 workers ran 862 img/s, PIL in 2 workers 377, and the
    tensor path in the main process 131 (``benchmarks/results/decode-cpu.json``).
    """
    return device.type == "cuda"


class TensorInWorker:
    """The tensor path done where the loader runs (CPU workers): a JPEG the tensor decoder takes
    is decoded by torchvision on the CPU and resized by torch, anything else by the PIL path.
    Picklable for workers."""

    def __init__(self, pil: ImageToUint8) -> None:
        self.pil = pil
        self.steps = geometry(pil.pil_transform)  # refused here, in the main process

    def __call__(self, path: str) -> torch.Tensor:
        raw = read_jpeg(path)
        image = decode([raw.tensor], torch.device("cpu"))[0] if raw is not None else None
        if raw is None or image is None:
            return self.pil(path)
        return shape(upright(image, raw.orientation).unsqueeze(0), self.steps)[0]


class TensorDecoder:
    """The main process's half: decode a batch's JPEGs on ``device``, resize and crop them
    there, and merge them with the batch's PIL-decoded files in dataset order."""

    def __init__(self, paths: Sequence[str], pil: ImageToUint8, device: torch.device) -> None:
        self.files, self.device = ImageFiles(paths, pil), device
        self.steps = geometry(pil.pil_transform)

    def _group(self, i: int, image: torch.Tensor) -> tuple[int, ...]:
        """Images resized as one tensor: on CUDA all of one size (fewer kernel launches); on
        the CPU each alone, because torch's ``uint8`` antialiased resize ran a stacked batch at
        0.86 ms an image on one thread and 8.6 ms on two, against 0.44 and 0.31 one by one
        (500×375 JPEGs)."""
        return tuple(image.shape) if self.device.type == "cuda" else (i,)

    def __call__(self, batch: BytesBatch) -> Batch:
        """One batch of ``uint8`` images on the device, rows in dataset order.

        Each image is copied once into a preallocated batch (concatenating, then reordering,
        copied every image twice)."""
        failed = list(batch.failed)
        rows = list(zip(batch.index, batch.images, strict=True))  # the PIL path's, on the host
        decoded = decode([raw.tensor for _, raw in batch.raw], self.device) if batch.raw else []
        by_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for (i, raw), image in zip(batch.raw, decoded, strict=True):
            if image is None:  # the device refused it after all: the PIL path decides
                _, fallback, reason = self.files[i]
                if fallback is None:
                    failed.append((i, reason))
                else:
                    rows.append((i, fallback))
                continue
            image = upright(image, raw.orientation)
            by_size.setdefault(self._group(i, image), []).append((i, image))
        for group in by_size.values():
            images = [image for _, image in group]
            stacked = images[0].unsqueeze(0) if len(images) == 1 else torch.stack(images)
            rows += zip([i for i, _ in group], shape(stacked, self.steps), strict=True)
        if not rows:
            return Batch(batch.images, [], sorted(failed))
        rows.sort(key=lambda row: row[0])
        out = torch.empty((len(rows), *rows[0][1].shape), dtype=torch.uint8, device=self.device)
        for k, (_, image) in enumerate(rows):
            out[k].copy_(image, non_blocking=True)
        return Batch(out, [i for i, _ in rows], sorted(failed))


def pipeline(
    decode: str, paths: Sequence[str], pil: ImageToUint8, device: torch.device
) -> tuple[Callable[[str], Any], Callable[[list], Batch], Callable[[Batch], Batch]]:
    """The worker transform, the collate function and the main-process step of a decoder:
    for ``pil`` the exact path and nothing left to do; for ``tensor`` bytes in the workers, then
    the device, or, on the CPU, all of it in the workers (:func:`decode_on_device`)."""
    if decode == "pil":
        return pil, pil_collate, lambda batch: batch
    if not decode_on_device(device):
        return TensorInWorker(pil), pil_collate, lambda batch: batch
    return BytesOrPil(pil), collate, TensorDecoder(paths, pil, device)
