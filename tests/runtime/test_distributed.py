"""torchrun: two gloo ranks on CPU give exactly the one-process cache, resume after a rank is
killed (with another world size), refuse mismatched arguments, and split sweeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SLOW, TINY, TINY_EXTRACT, flags, free_port, make_tree, rank_env, torchrun
from featpipe.extraction.stage import extract
from featpipe.fitting.stage import fit
from featpipe.runs.record import list_runs


def ranks_said(done: subprocess.CompletedProcess) -> str:
    """The ranks' one-line errors, which torchrun's report of the failure pushes out of its
    last lines (one such failure under the full suite showed only the report: exit status 2)."""
    said = [line for line in done.stderr.splitlines() if "error:" in line]
    return "\n".join(said) or done.stderr[-2000:]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "data", classes=("a", "b", "c"), per_class=30)


@pytest.mark.parametrize("engine", ["torch", "openvino"])
def test_two_ranks_write_one_entry_equal_to_a_single_process(
    photos, tmp_path, tiny_openvino, engine
) -> None:
    options = TINY | {"engine": engine}
    # With an earlier run's OpenVINO IR in both caches: each rank compiles it, none converts.
    cache, one = (tiny_openvino(tmp_path / name) for name in ("two", "one"))
    done = subprocess.run(
        torchrun(2, "extract", str(photos), *flags(options), "--cache-dir", str(cache)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, ranks_said(done)
    [entry] = cache.glob("data/*.h5")
    shards = sorted(p.name[:4] for p in entry.with_suffix(".parts").glob("*.h5"))
    assert shards == ["w000", "w001"]  # each rank wrote its own shard, no file shared
    single = extract(photos, cache_dir=one, **options).load()
    both = extract(photos, cache_dir=cache, **options)
    assert both.hit
    joined = both.load()
    assert list(joined.relpath) == list(single.relpath)
    # Row for row; values agree to float rounding (torchrun runs each rank single-threaded, so
    # convolution sums are ordered differently than in one two-thread process).
    np.testing.assert_allclose(joined.X, single.X, rtol=1e-5, atol=1e-6)
    ranks = joined.meta["provenance"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and sum(r["rows"] for r in ranks) == 90
    assert joined.meta["provenance"]["settings"]["engine"] == engine


def test_killed_rank_resumes_with_another_world_size(photos, tmp_path) -> None:
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        torchrun(2, "extract", str(photos), *flags(SLOW), "--cache-dir", str(cache)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    victim = None
    while victim is None:
        assert proc.poll() is None and time.monotonic() < deadline
        for journal in cache.glob("data/*.parts/w001-*.rows"):
            try:
                if journal.read_text().count("\n") >= 3:  # header + two batches
                    victim = int(journal.name.split("-")[1])
            except FileNotFoundError:
                continue
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)  # rank 1 dies; torchrun stops the others
    assert proc.wait(timeout=120) != 0
    resumed = extract(photos, cache_dir=cache, **SLOW)  # one process now
    assert 0 < resumed.n_new < 90
    clean = extract(photos, cache_dir=tmp_path / "clean", **SLOW)
    np.testing.assert_allclose(resumed.load().X, clean.load().X, rtol=1e-5, atol=1e-6)


def test_mismatched_arguments_are_an_error_on_every_rank(photos, tmp_path) -> None:
    port = str(free_port())
    procs = []
    for rank, pool in ((0, "avg"), (1, "max")):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "featpipe",
                    "extract",
                    str(photos),
                    *flags(TINY),
                    "--pool",
                    pool,
                    "--cache-dir",
                    str(tmp_path / "c"),
                ],
                env=rank_env(rank, 2, port),
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2
        assert "mismatched arguments across ranks: rank 1 differs from rank 0 in pool" in err


def test_sweep_split_across_ranks_matches_one_process(photos, tmp_path) -> None:
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    options = TINY_EXTRACT | {"cache_dir": cache}
    extract(photos, **TINY, cache_dir=cache)
    args = [
        "fit",
        str(photos),
        *flags(TINY),
        "--cache-dir",
        str(cache),
        "--runs-dir",
        str(runs / "two"),
        "--sweep",
        "head=linear,knn,logreg",
        "lr=1e-3,1e-2",
    ]
    done = subprocess.run(torchrun(2, *args), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, ranks_said(done)
    [two] = list_runs(runs / "two")  # written once, by rank 0
    _, one = fit(
        photos,
        "test_efficientnet",
        grid={"head": ["linear", "knn", "logreg"], "lr": [1e-3, 1e-2]},
        runs_dir=runs / "one",
        extract_options=options,
    )
    assert two.metrics.chosen == one.best.config.params()
    got = {tuple(sorted(c.items())) for c in [r["config"] for r in two.curves()]}
    assert len(got) == 2  # both stacked linear heads came back from whichever rank ran them
    assert two.metrics.val.mean == pytest.approx(one.best.mean("accuracy"))
