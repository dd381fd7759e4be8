"""The extract cache: hits, incremental appends, keys, crash safety, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import TINY, make_tree, write_image
from featpipe.cache.catalog import find_entries, list_entries, remove_entry
from featpipe.cache.entry import iter_chunks, load_features, parts_dir, verify
from featpipe.cache.index import read_index
from featpipe.errors import FeatpipeError
from featpipe.extraction.stage import extract


def run(data: Path, cache_dir: Path, **overrides):
    return extract(data, cache_dir=cache_dir, **(TINY | overrides))


def test_first_run_extracts_then_hits(tree: Path, cache_dir: Path) -> None:
    first = run(tree, cache_dir)
    assert (first.hit, first.n, first.n_new, first.dim) == (False, 12, 12, 256)
    assert first.entry == cache_dir / "tiny" / f"{first.entry.stem}.h5"
    assert first.entry.stem.startswith("test_efficientnet-")
    again = run(tree, cache_dir)
    assert again.hit and again.n_new == 0 and again.entry == first.entry
    features = again.load()
    assert features.X.shape == (12, 256) and features.X.dtype == np.float32
    assert features.class_names == ["ants", "bees"]
    assert set(features.split) <= {"train", "val", "test"}


def test_entry_is_a_plain_h5py_file_with_provenance(tree: Path, cache_dir: Path) -> None:
    result = run(tree, cache_dir)
    with h5py.File(result.entry, "r") as f:
        assert f["features"].is_virtual and f["features"].shape == (12, 256)
        assert list(f["relpath"].asstr()[:2]) == ["ants/ants_000.png", "ants/ants_001.png"]
        assert f.attrs["precision"] == "fp32"
        assert "torch" in f.attrs["provenance"] and "images_per_s" in f.attrs["provenance"]


def test_grown_dataset_extracts_only_new_files(tree: Path, cache_dir: Path) -> None:
    before = run(tree, cache_dir).load()
    write_image(tree / "ants" / "ants_0005b.png", seed=77)  # sorts into the middle
    write_image(tree / "bees" / "bees_999.png", seed=78)
    grown = run(tree, cache_dir)
    assert grown.n_new == 2 and grown.n == 14
    after = grown.load()
    old = {p: x for p, x in zip(before.relpath, before.X, strict=True)}
    for path, x in zip(after.relpath, after.X, strict=True):
        if path in old:
            assert np.array_equal(old[path], x)  # bitwise: never recomputed
    assert list(after.relpath) == sorted(after.relpath, key=lambda p: (p.split("/")[0], p))


def test_changed_file_is_extracted_again_and_removed_file_drops_out(
    tree: Path, cache_dir: Path
) -> None:
    before = run(tree, cache_dir).load()
    target = tree / "ants" / "ants_001.png"
    write_image(target, seed=999)
    os.utime(target, ns=(1, 10**18))  # a new mtime, whatever the clock resolution
    (tree / "bees" / "bees_002.png").unlink()
    result = run(tree, cache_dir)
    assert result.n_new == 1 and result.n == 11
    after = result.load()
    assert "bees/bees_002.png" not in set(after.relpath)
    row = list(after.relpath).index("ants/ants_001.png")
    old = list(before.relpath).index("ants/ants_001.png")
    assert not np.allclose(after.X[row], before.X[old])


def test_relabelling_never_reextracts(tmp_path: Path, cache_dir: Path) -> None:
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", seed=i)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"img/{i}.png,{'ab'[i % 2]}\n" for i in range(6)))
    first = run(manifest, cache_dir)
    manifest.write_text("path,label\n" + "".join(f"img/{i}.png,{'ab'[i < 3]}\n" for i in range(6)))
    second = run(manifest, cache_dir)
    assert second.n_new == 0 and not second.hit
    assert list(second.load().labels) == [1, 1, 1, 0, 0, 0]
    assert np.array_equal(first.load().X, second.load().X)


@pytest.mark.parametrize(
    "change",
    [
        {"image_size": 48},
        {"crop_pct": 1.0},
        {"pool": "max"},
        {"dtype": "float16"},
        {"precision": "bf16"},
        {"weights": "file"},
    ],
)
def test_anything_that_changes_the_numbers_changes_the_key(
    tree: Path, cache_dir: Path, change: dict
) -> None:
    base = run(tree, cache_dir)
    if "weights" in change:  # a different weights file: a different sha256 identity
        other = tmp_weights(tree.parent)
        change = {"weights": str(other)}
    changed = run(tree, cache_dir, **change)
    assert changed.entry != base.entry and changed.n_new == 12


def tmp_weights(folder: Path) -> Path:
    import torch

    from featpipe.backbones.build import BackboneSpec, load_classifier

    model = load_classifier(BackboneSpec("test_efficientnet", weights="none")).model
    torch.nn.init.constant_(model.conv_stem.weight, 0.01)
    path = folder / "custom.pth"
    torch.save(model.state_dict(), path)
    return path


def test_batch_size_and_workers_do_not_change_the_key_or_the_numbers(
    tree: Path, cache_dir: Path, tmp_path: Path
) -> None:
    a = run(tree, cache_dir)
    b = run(tree, tmp_path / "other", batch_size=3, workers=2)
    assert a.entry.name == b.entry.name
    np.testing.assert_allclose(a.load().X, b.load().X, rtol=1e-5, atol=1e-6)


def test_float16_storage(tree: Path, cache_dir: Path) -> None:
    f16 = run(tree, cache_dir, dtype="float16").load()
    f32 = run(tree, cache_dir).load()
    assert f16.X.dtype == np.float16
    np.testing.assert_allclose(f16.X.astype(np.float32), f32.X, rtol=2e-3, atol=2e-3)


def test_corrupt_files_are_skipped_and_recorded(tree: Path, cache_dir: Path) -> None:
    (tree / "ants" / "zero.png").write_bytes(b"")
    (tree / "bees" / "text.jpg").write_text("hello")
    result = run(tree, cache_dir)
    assert result.n == 12 and result.n_skipped == 2
    with h5py.File(result.entry, "r") as f:
        reasons = dict(
            zip(f["skipped/relpath"].asstr()[:], f["skipped/reason"].asstr()[:], strict=True)
        )
    assert reasons == {
        "ants/zero.png": "zero-byte file",
        "bees/text.jpg": "not an image PIL can identify",
    }
    assert run(tree, cache_dir).hit  # skipped files are remembered, not retried


def test_on_error_fail_names_the_file_and_keeps_finished_rows(tree: Path, cache_dir: Path) -> None:
    (tree / "bees" / "bees_003.png").write_bytes(b"broken")
    with pytest.raises(FeatpipeError, match=r"bees_003.png: not an image .*--on-error skip"):
        run(tree, cache_dir, on_error="fail")
    index = read_index(next(cache_dir.glob("tiny/*.parts")))
    assert len(index.rows) >= 8  # the batches before the bad file were sealed
    (tree / "bees" / "bees_003.png").unlink()
    resumed = run(tree, cache_dir, on_error="fail")
    assert resumed.n == 11 and resumed.n_new == 11 - len(index.rows)


def test_unwritable_cache_dir_is_a_clear_error(tree: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FeatpipeError, match=r"cache directory .*file/cache is not writable"):
        run(tree, blocker / "cache")


def test_entry_from_a_newer_format_is_refused(tree: Path, cache_dir: Path) -> None:
    result = run(tree, cache_dir)
    with h5py.File(result.entry, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(FeatpipeError, match="format version 99, newer than this featpipe"):
        load_features(result.entry)


def test_verify_finds_a_corrupt_shard_and_a_missing_one(tree: Path, cache_dir: Path) -> None:
    result = run(tree, cache_dir)
    assert verify(result.entry) == []
    shard = next(parts_dir(result.entry).glob("*.h5"))
    with h5py.File(shard, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset + 100 : offset + 104] = b"\xff\xff\xff\xff"
    shard.write_bytes(bytes(data))
    problems = verify(result.entry)
    assert problems and "corrupt" in problems[0] and "moved aside" in problems[0]
    assert not shard.exists()  # moved aside, so that nothing reads it as sound again
    with pytest.raises(FeatpipeError, match=r"shard file.* missing.*rerun the extract command"):
        load_features(result.entry)
    assert run(tree, cache_dir).n_new == 12  # the rerun recomputes what was lost
    assert verify(result.entry) == []  # and removes the corrupt copy


def test_streaming_reader_matches_the_in_memory_one(tree: Path, cache_dir: Path) -> None:
    result = run(tree, cache_dir)
    chunks = list(iter_chunks(result.entry, rows=5))
    assert [len(c) for c in chunks] == [5, 5, 2]
    whole = result.load()
    np.testing.assert_array_equal(np.concatenate([c.X for c in chunks]), whole.X)
    assert list(np.concatenate([c.relpath for c in chunks])) == list(whole.relpath)


def test_catalog_lists_finds_and_removes(tree: Path, cache_dir: Path) -> None:
    result = run(tree, cache_dir)
    (cache_dir / "tiny" / "junk.h5.tmp-1").write_bytes(b"half")
    [row] = list_entries(cache_dir)
    assert (row.dataset, row.backbone, row.n, row.dim) == ("tiny", "test_efficientnet", 12, 256)
    assert find_entries(cache_dir, result.entry.stem) == [result.entry]
    assert find_entries(cache_dir, "tiny") == [result.entry]
    # dataset/backbone: the stem without its key
    assert find_entries(cache_dir, "tiny/test_efficientnet") == [result.entry]
    assert remove_entry(result.entry) > 0
    assert not result.entry.exists() and not parts_dir(result.entry).exists()


def test_shards_roll_and_the_virtual_dataset_stitches_them(tree: Path, cache_dir: Path) -> None:
    make_tree(tree, per_class=10, seed=3)
    rolled = run(tree, cache_dir, shard_rows=4)
    assert len(list(parts_dir(rolled.entry).glob("*.h5"))) == 5
    single = run(tree, cache_dir.parent / "single")
    np.testing.assert_array_equal(rolled.load().X, single.load().X)
