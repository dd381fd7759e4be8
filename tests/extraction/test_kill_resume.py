"""SIGKILL in the middle of an extraction loses at most the batch in flight, and resuming gives
exactly the features of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SLOW, flags, make_tree
from featpipe.extraction.stage import extract


def _cli(data: Path, cache: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "featpipe",
        "extract",
        str(data),
        "--cache-dir",
        str(cache),
        *flags(SLOW),
    ]


def _batches_written(cache: Path, old: set[Path]) -> int:
    """Complete batch lines in journals that did not exist when the process started."""
    total = 0
    for path in set(cache.glob("*/*.parts/*.rows")) - old:
        try:
            total += max(0, len(path.read_bytes().split(b"\n")) - 2)
        except FileNotFoundError:  # sealed between glob and read
            continue
    return total


def _kill_after(cmd: list[str], batches: int, timeout: float = 120) -> None:
    cache = Path(cmd[cmd.index("--cache-dir") + 1])
    old = set(cache.glob("*/*.parts/*.rows"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while _batches_written(cache, old) < batches:
            assert proc.poll() is None, "extraction finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "photos", classes=("a", "b", "c"), per_class=80)
    killed_cache = tmp_path / "killed"
    _kill_after(_cli(data, killed_cache), batches=5)
    _kill_after(_cli(data, killed_cache), batches=3)  # killed again, in the resumed run
    assert not list(killed_cache.glob("*/*.h5")), "no entry may exist before a run completes"
    resumed = extract(data, cache_dir=killed_cache, **SLOW)
    assert 0 < resumed.n_new <= 240 - 8 * 4  # at least the 8 journaled batches were kept
    clean = extract(data, cache_dir=tmp_path / "clean", **SLOW)
    assert clean.n == resumed.n == 240
    a, b = resumed.load(), clean.load()
    assert list(a.relpath) == list(b.relpath)
    np.testing.assert_array_equal(a.X, b.X)


@pytest.mark.slow
def test_kill_at_random_moments_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    """The soak of the attack: SIGKILL at a random moment (startup, journal, seal, commit),
    then resume; every resumed entry must equal an uninterrupted run's, and leave nothing
    behind. ``FEATPIPE_SOAK_KILLS`` sets how many (default 10); run with ``pytest -m slow``."""
    kills = int(os.environ.get("FEATPIPE_SOAK_KILLS", "10"))
    data = make_tree(tmp_path / "photos", classes=("a", "b", "c"), per_class=40)
    clean = extract(data, cache_dir=tmp_path / "clean", **SLOW).load()
    rng = np.random.default_rng(0)
    moments, sound = [], 0
    for k in range(kills):
        cache = tmp_path / f"killed-{k}"
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        proc = subprocess.Popen(_cli(data, cache), **quiet)
        time.sleep(float(rng.uniform(0.5, 12.0)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        moments.append(_batches_written(cache, set()))
        resumed = extract(data, cache_dir=cache, **SLOW)
        a = resumed.load()
        parts = next(cache.glob("*/*.parts"))
        leftovers = [p.name for p in parts.iterdir() if not p.name.endswith(".h5")]
        same = list(a.relpath) == list(clean.relpath) and np.array_equal(a.X, clean.X)
        sound += same and leftovers == [".claims.lock"]
    print(f"{sound} of {kills} kills resumed to identical features (batches journaled: {moments})")
    assert sound == kills
