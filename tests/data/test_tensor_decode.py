"""The tensor decode path (``decode="tensor"``) on the CPU: the same code the CUDA run takes.

The device decode runs here on torchvision's CPU ``decode_jpeg``; what differs on CUDA is only
the decoder library behind the same call. So these tests hold every step of it: which files the
workers hand over as bytes, EXIF orientation against PIL's, the batch that falls back one by one,
the merge in dataset order with PIL-decoded files, the geometry, and (in
``tests/extraction/test_tensor_extract.py``) whole extractions.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from featpipe.data.images import load_image
from featpipe.data.tensor_decode import (
    BytesBatch,
    BytesOrPil,
    TensorDecoder,
    TensorInWorker,
    collate,
    decode,
    geometry,
    read_jpeg,
    upright,
)
from featpipe.data.transforms import ImageToUint8
from featpipe.errors import ArgumentError

CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
}
CPU = torch.device("cpu")


def _chelsea(path: Path, **save: object) -> Path:
    """A real photo (451×300, not square: every turn shows) saved as ``path``."""
    Image.fromarray(skimage.data.chelsea()).save(path, **save)
    return path


def _with_orientation(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _chelsea(path, quality=90, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil_exactly(tmp_path: Path, orientation: int) -> None:
    path = _with_orientation(tmp_path / f"o{orientation}.jpg", orientation)
    raw = read_jpeg(str(path))
    assert raw is not None and raw.orientation == orientation
    decoded = decode([raw.tensor], CPU)[0]
    assert decoded is not None
    ours = upright(decoded, orientation).permute(1, 2, 0).numpy()
    theirs = np.asarray(load_image(path))  # ImageOps.exif_transpose inside
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)  # same libjpeg-turbo: the same pixels, turned alike


def test_real_photos_match_the_pil_pipeline_within_interpolation(tmp_path: Path) -> None:
    """The tensor resize (antialiased bicubic) against PIL's on real photos: at most a level or
    two on a few pixels; the geometry (size, crop offsets) identical."""
    paths = []
    for name in ("chelsea", "coffee", "astronaut", "camera"):  # camera: a grayscale JPEG
        paths.append(str(tmp_path / f"{name}.jpg"))
        Image.fromarray(getattr(skimage.data, name)()).save(paths[-1], quality=90)
    pil = ImageToUint8(CONFIG, False)
    worker = BytesOrPil(pil)
    batch = collate([(i, worker(p), "") for i, p in enumerate(paths)])
    assert len(batch.raw) == 4 and batch.index == []  # every one decoded on the "device"
    out = TensorDecoder(paths, pil, CPU)(batch)
    assert out.index == [0, 1, 2, 3] and out.images.shape == (4, 3, 224, 224)
    for image, path in zip(out.images, paths, strict=True):
        diff = (image.int() - pil(path).int()).abs()
        assert diff.max() <= 3 and diff.float().mean() < 0.05, path


def _odd_files(root: Path) -> dict[str, Path]:
    """One file of every kind the tensor decoder must leave to PIL, and two it takes."""
    root.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(skimage.data.coffee())
    files = {"plain": _chelsea(root / "a_plain.jpg", quality=90)}
    files["png"] = root / "b.png"
    photo.save(files["png"])
    files["cmyk"] = root / "c_cmyk.jpg"
    photo.convert("CMYK").save(files["cmyk"], quality=90)
    files["progressive"] = root / "d_progressive.jpg"
    photo.save(files["progressive"], quality=90, progressive=True)
    files["truncated"] = root / "e_truncated.jpg"
    files["truncated"].write_bytes(files["plain"].read_bytes()[:4000])
    files["empty"] = root / "f_empty.jpg"
    files["empty"].write_bytes(b"")
    files["sixteen"] = root / "g_16bit.png"
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(
        files["sixteen"]
    )
    files["rotated"] = _with_orientation(root / "h_rotated.jpg", 6)
    return files


def test_only_plain_jpegs_are_handed_over_as_bytes(tmp_path: Path) -> None:
    files = _odd_files(tmp_path / "odd")
    taken = {kind for kind, path in files.items() if read_jpeg(str(path)) is not None}
    assert taken == {"plain", "rotated"}


def test_a_batch_mixes_bytes_pil_and_failures_in_dataset_order(tmp_path: Path) -> None:
    files = _odd_files(tmp_path / "odd")
    paths = [str(p) for p in files.values()]
    pil = ImageToUint8(CONFIG, False)
    worker = BytesOrPil(pil)
    samples = []
    for i, path in enumerate(paths):  # what ImageFiles hands collate: a failure is a reason
        try:
            samples.append((i, worker(path), ""))
        except Exception as exc:
            samples.append((i, None, str(exc)))
    out = TensorDecoder(paths, pil, CPU)(collate(samples))
    kinds = list(files)
    assert [kinds[i] for i in out.index] == [
        "plain",
        "png",
        "cmyk",
        "progressive",
        "sixteen",
        "rotated",
    ]
    assert {kinds[i] for i, _ in out.failed} == {"truncated", "empty"}
    for i in out.index[1:5]:  # the PIL path's own pixels for what it decoded
        assert torch.equal(out.images[out.index.index(i)], pil(paths[i]))


def test_decoding_in_workers_gives_the_device_path_pixels(tmp_path: Path) -> None:
    """On the CPU the workers run the tensor path themselves: the same pixels, file by file,
    as the batched main-process path a GPU takes, fallbacks included."""
    files = _odd_files(tmp_path / "odd")
    paths = [str(p) for kind, p in files.items() if kind not in ("truncated", "empty")]
    pil = ImageToUint8(CONFIG, False)
    batch = collate([(i, BytesOrPil(pil)(p), "") for i, p in enumerate(paths)])
    batched = TensorDecoder(paths, pil, CPU)(batch)
    in_worker = TensorInWorker(pil)
    assert batched.index == list(range(len(paths)))
    for image, path in zip(batched.images, paths, strict=True):
        assert torch.equal(image, in_worker(path)), path


def test_a_batch_the_decoder_refuses_is_retried_one_by_one(tmp_path: Path) -> None:
    """Batched decode returns nothing when one file fails; the others must still come back,
    and the bad one is judged by the PIL path (its reason, not torchvision's)."""
    good = _chelsea(tmp_path / "good.jpg", quality=90)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:3000])
    pil = ImageToUint8(CONFIG, False)
    sneaked = BytesBatch(
        torch.empty(0, 3, 1, 1, dtype=torch.uint8),
        [],
        [],
        [(0, read_jpeg(str(good))), (1, read_jpeg(str(good)))],
    )
    sneaked.raw[1][1].data = bytearray(bad.read_bytes())
    decoder = TensorDecoder([str(good), str(bad)], pil, CPU)
    out = decoder(sneaked)
    assert out.index == [0] and out.images.shape == (1, 3, 224, 224)
    assert out.failed == [(1, out.failed[0][1])] and "truncated" in out.failed[0][1]


def test_squash_has_a_tensor_twin_and_border_refuses_the_tensor_path(tmp_path: Path) -> None:
    path = str(_chelsea(tmp_path / "a.jpg", quality=90))
    squash = ImageToUint8(CONFIG | {"crop_mode": "squash"}, False)
    raw = read_jpeg(path)
    out = TensorDecoder([path], squash, CPU)(BytesBatch(torch.empty(0), [], [], [(0, raw)]))
    assert (out.images[0].int() - squash(path).int()).abs().max() <= 3
    border = ImageToUint8(CONFIG | {"crop_mode": "border"}, False)
    with pytest.raises(ArgumentError, match=r"^decode tensor: .*ResizeKeepRatio.*use pil"):
        geometry(border.pil_transform)


def test_worker_output_pickles_for_dataloader_workers(tmp_path: Path) -> None:
    import pickle

    path = _chelsea(tmp_path / "a.jpg", quality=90)
    raw = pickle.loads(pickle.dumps(BytesOrPil(ImageToUint8(CONFIG, False))(str(path))))
    assert raw.data == path.read_bytes()


def test_bytes_are_read_not_decoded(tmp_path: Path) -> None:
    """The worker's share is a read and a header parse: the bytes are the file's own."""
    path = _chelsea(tmp_path / "a.jpg", quality=90)
    raw = read_jpeg(str(path))
    assert raw is not None and raw.tensor.dtype == torch.uint8 and raw.tensor.ndim == 1
    assert Image.open(io.BytesIO(bytes(raw.tensor.numpy()))).size == (451, 300)
