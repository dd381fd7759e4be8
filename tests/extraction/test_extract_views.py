"""Augmented views in the cache: reproducible (rerun, resume after SIGKILL, two ranks), grown
incrementally, keyed apart from the eval features, read with a view axis, verified."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from extraction.test_kill_resume import _kill_after

from conftest import DATA_CONFIG_32, SLOW, TINY, flags, make_tree, torchrun
from featpipe.cache.entry import verify
from featpipe.cache.views import iter_views, load_views
from featpipe.data.augment import Augment, view_source
from featpipe.errors import ArgumentError
from featpipe.extraction.stage import extract


def _views(data: Path, cache: Path, k: int, **options) -> object:
    return extract(data, cache_dir=cache, views=k, **(TINY | options))


def test_views_are_train_only_shared_eval_key_and_growing_k_extracts_only_new_views(
    tree: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    plain = extract(tree, cache_dir=cache, **TINY)
    two = _views(tree, cache, 2)
    assert two.hit and two.entry == plain.entry  # the eval features are plain extract's
    n_train = int((plain.load().split == "train").sum())
    assert two.views.n_new == 2 * n_train and two.views.n_images == n_train
    four = _views(tree, cache, 4)
    assert four.views.n_new == 2 * n_train  # views 2 and 3 only
    first, grown = two.views.load(), four.views.load()
    assert first.X.shape == (n_train, 2, 256) and grown.X.shape == (n_train, 4, 256)
    assert set(grown.split) == {"train"} and list(grown.relpath) == list(first.relpath)
    np.testing.assert_array_equal(grown.X[:, :2], first.X)
    assert not np.allclose(grown.X[:, 0], grown.X[:, 1])  # views differ from each other
    again = _views(tree, cache, 4)
    assert again.views.hit and again.views.n_new == 0
    # A fresh cache (another run from nothing) computes the same views.
    fresh = _views(tree, tmp_path / "fresh", 4).views.load()
    np.testing.assert_allclose(fresh.X, grown.X, rtol=0, atol=1e-6)
    # Another recipe is another views entry over the same eval entry.
    other = _views(tree, cache, 2, augment=Augment(crop_scale=0.5))
    assert other.entry == plain.entry and other.views.entry != four.views.entry
    assert not np.allclose(other.views.load().X, first.X)
    assert verify(four.views.entry) == []


def test_views_read_in_chunks_equal_the_whole(tree: Path, cache_dir: Path) -> None:
    result = _views(tree, cache_dir, 3).views
    whole = load_views(result.entry)
    chunks = list(iter_views(result.entry, images=3))
    assert [len(c) for c in chunks] == [3, 3, len(whole) - 6]
    np.testing.assert_array_equal(np.concatenate([c.X for c in chunks]), whole.X)
    assert list(np.concatenate([c.relpath for c in chunks])) == list(whole.relpath)
    np.testing.assert_array_equal(np.concatenate([c.labels for c in chunks]), whole.labels)
    assert whole.meta["views"] == 3 and whole.meta["augment"]["scale"] == [0.08, 1.0]
    assert load_views(result.entry, views=2).X.shape[1] == 2


def test_a_view_is_its_seed_alone_and_leaves_the_callers_generators_alone(tree: Path) -> None:
    from featpipe.data.train_transform import ViewImages

    images = ViewImages(DATA_CONFIG_32, Augment(color_jitter=0.4))
    path = next(tree.rglob("*.png"))
    torch.manual_seed(1)
    random.seed(1)
    a = images(view_source(str(path), "ants/x.png", 0))
    after = (torch.rand(1), random.random())
    torch.manual_seed(123)  # another process state entirely
    random.seed(7)
    b = images(view_source(str(path), "ants/x.png", 0))
    assert torch.equal(a, b)
    assert not torch.equal(a, images(view_source(str(path), "ants/x.png", 1)))
    assert not torch.equal(a, images(view_source(str(path), "ants/y.png", 0)))
    torch.manual_seed(1)
    random.seed(1)
    assert (torch.rand(1), random.random()) == after  # the caller's draws are untouched


def test_bad_view_options_are_refused_before_anything_runs(tree: Path, cache_dir: Path) -> None:
    with pytest.raises(ArgumentError) as caught:
        extract(tree, cache_dir=cache_dir, views=-1, **TINY)
    assert caught.value.param == "views" and not cache_dir.exists()
    for bad, param in (({"crop_scale": 0}, "crop_scale"), ({"hflip": 2}, "hflip")):
        with pytest.raises(ArgumentError) as caught:
            Augment(**bad)
        assert caught.value.param == param


def _view_cli(data: Path, cache: Path, k: int) -> list[str]:
    command = [sys.executable, "-m", "featpipe", "extract", str(data), "--cache-dir", str(cache)]
    return [*command, *flags(SLOW), "--views", str(k)]


def test_sigkill_during_views_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "photos", classes=("a", "b", "c"), per_class=20)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    extract(data, cache_dir=killed, **SLOW)  # the eval entry, so that the kill hits the views
    shutil.copytree(killed, clean)
    _kill_after(_view_cli(data, killed, 4), batches=4)
    assert len(list(killed.glob("*/*.h5"))) == 1, "no views entry before a views run completes"
    resumed = extract(data, cache_dir=killed, views=4, **SLOW).views
    whole = extract(data, cache_dir=clean, views=4, **SLOW).views
    assert 0 < resumed.n_new <= whole.n_new - 4 * 4  # the journaled batches were kept
    a, b = resumed.load(), whole.load()
    assert list(a.relpath) == list(b.relpath)
    np.testing.assert_array_equal(a.X, b.X)
    assert verify(resumed.entry) == []


def test_two_ranks_compute_the_views_of_one_process(tree: Path, tmp_path: Path) -> None:

    cache = tmp_path / "two"
    args = ["extract", str(tree), *flags(TINY), "--cache-dir", str(cache), "--views", "3"]
    done = subprocess.run(torchrun(2, *args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    [entry] = cache.glob("*/*-views-*.h5")
    shards = sorted(p.name[:4] for p in entry.with_suffix(".parts").glob("*.h5"))
    assert shards == ["w000", "w001"]  # each rank computed its part of the views
    two = load_views(entry)
    one = _views(tree, tmp_path / "one", 3).views.load()
    assert list(two.relpath) == list(one.relpath)
    np.testing.assert_allclose(two.X, one.X, rtol=0, atol=1e-5)
