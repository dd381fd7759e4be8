"""Whole extractions with ``decode="tensor"`` on the CPU: fidelity to the exact PIL pipeline on
real photos with real weights, fallbacks in the same run, the key, the cache, the CLI."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import TINY, TINY_EXTRACT, console_script, flags
from featpipe.cache.entry import load_features, read_meta
from featpipe.data import tensor_decode
from featpipe.errors import ArgumentError, FeatpipeError
from featpipe.extraction.stage import extract

# The product's bar for a decoder that changes pixels: every real photo at cosine >= 0.999.
MIN_COSINE = 0.999
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera")  # camera is grayscale
EXACT = {"precision": "fp32", "engine": "torch", "batch_size": 3, "workers": 0}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "photos"
    out.mkdir()
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).save(out / f"{name}.jpg", quality=90)
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_tensor_decoding_stays_within_the_cosine_bar_on_real_photos(
    photos: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    kw = {"weights": "offline", "cache_dir": cache} | EXACT
    exact = extract(photos, "tf_efficientnet_lite0", **kw)
    tensor = extract(photos, "tf_efficientnet_lite0", decode="tensor", **kw)
    assert tensor.entry != exact.entry  # the decoder is in the key: the rows never mix
    fields = read_meta(tensor.entry)["key_fields"]
    assert fields["transform"]["decode"].startswith("tensor:")
    assert "decode" not in read_meta(exact.entry)["key_fields"]["transform"]
    assert "tensor decoding" in tensor.summary() and "tensor decoding" not in exact.summary()
    a, b = load_features(exact.entry), load_features(tensor.entry)
    assert list(a.relpath) == list(b.relpath)
    cos = _cosine(a.X, b.X)
    assert cos.min() >= MIN_COSINE, dict(zip(a.relpath, cos.tolist(), strict=True))
    again = extract(photos, "tf_efficientnet_lite0", decode="tensor", **kw)
    assert again.hit and again.entry == tensor.entry


def _skips(entry: Path) -> dict[str, str]:
    with h5py.File(entry, "r") as f:
        return dict(
            zip(f["skipped/relpath"].asstr()[:], f["skipped/reason"].asstr()[:], strict=True)
        )


def _odd_tree(root: Path) -> Path:
    """Real photos as a plain JPEG, a rotated one, and every kind that must fall back."""
    root.mkdir(parents=True)
    cat, cup = Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())
    cat.save(root / "a_plain.jpg", quality=90)
    cup.save(root / "b.png")
    cup.convert("CMYK").save(root / "c_cmyk.jpg", quality=90)
    cup.save(root / "d_progressive.jpg", quality=90, progressive=True)
    (root / "e_truncated.jpg").write_bytes((root / "a_plain.jpg").read_bytes()[:4000])
    exif = Image.Exif()
    exif[0x0112] = 8
    cat.save(root / "f_rotated.jpg", quality=90, exif=exif.tobytes())
    (root / "g_empty.jpg").write_bytes(b"")
    return root


@pytest.mark.parametrize("on_device", [False, True])
def test_files_the_decoder_cannot_take_fall_back_in_the_same_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_device: bool
) -> None:
    """Both places the tensor path decodes: the CPU's workers, and the main process's batched
    decode that a GPU takes (here on the CPU: the same code, torchvision's CPU decoder)."""
    monkeypatch.setattr(tensor_decode, "decode_on_device", lambda device: on_device)
    data = _odd_tree(tmp_path / "odd")
    cache = tmp_path / "cache"
    pil = extract(data, cache_dir=cache, **TINY)
    tensor = extract(data, cache_dir=cache, decode="tensor", **(TINY | {"workers": 2}))
    assert (tensor.n, tensor.n_skipped) == (pil.n, pil.n_skipped) == (5, 2)
    assert _skips(tensor.entry) == _skips(pil.entry)  # the PIL path's own reasons
    a, b = load_features(pil.entry), load_features(tensor.entry)
    assert list(a.relpath) == list(b.relpath)
    rows = {p: i for i, p in enumerate(a.relpath)}
    for name in ("b.png", "c_cmyk.jpg", "d_progressive.jpg"):  # decoded by PIL both times
        np.testing.assert_allclose(b.X[rows[name]], a.X[rows[name]], rtol=1e-4, atol=1e-5)
    assert _cosine(a.X, b.X).min() > 0.99  # the rotated JPEG upright too (random weights)


def test_on_error_fail_names_the_first_bad_file_on_the_tensor_path(tmp_path: Path) -> None:
    data = _odd_tree(tmp_path / "odd")
    with pytest.raises(FeatpipeError, match=r"e_truncated\.jpg: truncated"):
        extract(data, cache_dir=tmp_path / "cache", decode="tensor", on_error="fail", **TINY)


def test_an_unknown_decoder_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match=r"^decode gpu: choose one of pil, tensor"):
        extract(tmp_path / "nowhere", cache_dir=tmp_path / "cache", decode="gpu", **TINY)


def test_the_decode_flag_through_the_console_script(photos: Path, tmp_path: Path) -> None:
    options = flags(TINY_EXTRACT)
    common = ["extract", photos, "-b", TINY["backbone"], "--cache-dir", tmp_path / "c", *options]
    done = console_script(*common, "--decode", "tensor", columns=200)
    assert done.returncode == 0, done.stderr
    assert "tensor decoding" in done.stdout
    hit = console_script(*common, "--decode", "tensor", columns=200)
    assert hit.returncode == 0 and "cache hit" in hit.stdout and "tensor decoding" in hit.stdout
    entry = next(tmp_path.glob("c/*/*.h5"))
    info = console_script("cache", "info", entry, columns=200)
    assert info.returncode == 0 and "tensor decoding" in info.stdout, info.stderr
    bad = console_script(*common, "--decode", "gpu", columns=200)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["error: --decode gpu: choose one of pil, tensor"], (
        bad.stderr
    )
