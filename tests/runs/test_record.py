"""The run record: one atomic writer for every kind; readers skip and name what is incomplete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from conftest import TINY, TINY_EXTRACT, console_script, make_tree
from featpipe.errors import DataError, StorageError
from featpipe.fitting.stage import fit
from featpipe.runs.metrics import RunMetrics, Scores
from featpipe.runs.record import (
    IncompleteRunWarning,
    list_runs,
    load_run,
    results_table,
    stale_temps,
    write_run,
)


def write(runs_dir: Path, kind: str = "fit", **changes) -> Path:
    """A small run of ``kind`` (mechanics: no head, synthetic scores)."""
    options = {
        "kind": kind,
        "dataset": "cells",
        "dataset_root": "/data/cells",
        "backbone": "lite0",
        "request": {"seed": 0},
        "metrics": RunMetrics(metric="accuracy", val=Scores(0.75)),
        "rows": [{"head": kind, "val_accuracy": 0.75, "chosen": True}],
        "curves": [{"label": kind, "history": {"loss": [1.0, 0.5]}}],
    } | changes
    return write_run(runs_dir, **options).path


def test_every_kind_is_written_whole_with_its_files(tmp_path) -> None:
    fit = write(tmp_path)
    tuned = write(
        tmp_path,
        "finetune",
        files={"weights.bin": b"\x00\x01", "cam/cam.txt": lambda p: p.write_text("map")},
        extra={"weights_identity": "sha256:abc"},
    )
    assert fit.parent == tuned.parent == tmp_path / "cells" / "lite0"
    assert tuned.name.startswith("finetune-") and not fit.name.startswith("finetune-")
    run = load_run(tuned)
    assert run.kind == "finetune" and run.config["weights_identity"] == "sha256:abc"
    assert (tuned / "weights.bin").read_bytes() == b"\x00\x01"
    assert (tuned / "cam" / "cam.txt").read_text() == "map"
    assert run.curves() == [{"label": "finetune", "history": {"loss": [1.0, 0.5]}}]
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []
    assert not any(p.name == ".writer.lock" for p in tmp_path.rglob("*"))
    rows = results_table(tmp_path)
    assert [(r["head"], r["dataset"], r["backbone"]) for r in rows] == [
        ("fit", "cells", "lite0"),
        ("finetune", "cells", "lite0"),
    ]
    assert {r["run"] for r in rows} == {fit.name, tuned.name}
    with pytest.raises(StorageError, match="already exists"):
        write(tmp_path, path=tuned)


def test_a_failing_writer_leaves_nothing(tmp_path) -> None:
    def fail(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match="disk full"):
        write(tmp_path, files={"big.bin": fail})
    assert list(tmp_path.rglob("*.*")) == []
    assert list_runs(tmp_path) == []


def test_format_1_runs_are_still_read(tmp_path) -> None:
    folder = write(tmp_path)
    config = json.loads((folder / "run.json").read_text())
    del config["kind"]
    config["format"] = 1
    (folder / "run.json").write_text(json.dumps(config))
    run = load_run(folder)
    assert run.kind == "fit" and run.config["format"] == 1


def damage(runs_dir: Path) -> dict[str, Path]:
    """The states a kill left with fine-tune's old in-place writer, and two damaged files."""
    base = runs_dir / "cells" / "lite0"
    states = {}
    for name, files in {
        "only-run-json": ["run.json"],
        "no-rows": ["run.json", "metrics.json"],
        "checkpoint-only": ["checkpoint.pt"],
        "bad-json": ["run.json", "metrics.json", "rows.csv"],
    }.items():
        folder = base / f"finetune-{name}"
        folder.mkdir(parents=True)
        for file in files:
            (folder / file).write_text("{}" if file.endswith(".json") else "x")
        states[name] = folder
    (states["bad-json"] / "metrics.json").write_text('{"val": ')
    return states


def test_readers_skip_and_name_incomplete_runs(tmp_path) -> None:
    good = write(tmp_path)
    states = damage(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = list_runs(tmp_path)
    assert [r.path for r in runs] == [good]
    messages = [str(w.message) for w in caught if w.category is IncompleteRunWarning]
    assert len(messages) == len(states)
    for name, folder in states.items():
        assert any(str(folder) in m for m in messages), name
    assert any("resume it with featpipe finetune --out" in m for m in messages)
    with pytest.raises(DataError, match=r"metrics\.json, rows\.csv missing"):
        load_run(states["only-run-json"])
    with pytest.raises(DataError, match="damaged featpipe run"):
        load_run(states["bad-json"])


def test_results_cli_lists_the_good_runs_and_names_the_broken_ones(tmp_path) -> None:
    good = write(tmp_path)
    states = damage(tmp_path)
    done = console_script(
        "results", "--runs-dir", tmp_path, "--csv", tmp_path / "t.csv", timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == len(states)
    for folder in states.values():
        assert any(str(folder) in line for line in skipped)
    assert good.name in (tmp_path / "t.csv").read_text()


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from featpipe.runs.metrics import RunMetrics
    from featpipe.runs.record import write_run

    def slow(path):
        path.write_bytes(b"partial")
        print("writing", flush=True)
        time.sleep(600)

    write_run(Path(sys.argv[1]), kind="finetune", dataset="cells", dataset_root="/d",
              backbone="lite0", request={}, metrics=RunMetrics(), rows=[], files={"w.bin": slow})
    """
)


def test_a_killed_writer_leaves_no_run_and_its_temp_is_removed_next_time(tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        (temp,) = tmp_path.glob("*/*/*.tmp")
        assert stale_temps(tmp_path) == []  # its writer is alive: never removed
        write(tmp_path)
        assert temp.exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a temporary folder is no run and no warning
        assert [r.kind for r in list_runs(tmp_path)] == ["fit"]
    assert stale_temps(tmp_path) == [temp]
    write(tmp_path)
    assert not temp.exists() and len(list_runs(tmp_path)) == 2


def test_a_temp_folder_without_a_lock_is_stale_only_when_old(tmp_path) -> None:
    temp = tmp_path / "cells" / "lite0" / "20250101-000000-abcdef.tmp"
    temp.mkdir(parents=True)
    assert stale_temps(tmp_path) == []
    old = time.time() - 3600
    os.utime(temp, (old, old))
    assert stale_temps(tmp_path) == [temp]


def test_report_cli_skips_and_names_incomplete_runs(tmp_path) -> None:
    data = make_tree(tmp_path / "shapes", per_class=8)
    extract = TINY_EXTRACT | {"cache_dir": tmp_path / "c"}
    run, _ = fit(data, TINY["backbone"], runs_dir=tmp_path / "runs", extract_options=extract)
    assert run.kind == "fit" and (run.path / "head" / "head.json").is_file()
    states = damage(tmp_path / "runs")
    done = console_script(
        "report", "--runs-dir", tmp_path / "runs", "-o", tmp_path / "r", timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == len(states)
    for folder in states.values():
        assert any(str(folder) in line for line in skipped)
    assert "shapes" in (tmp_path / "r" / "index.html").read_text()


def test_a_fine_tune_directory_is_completed_in_place_run_json_last(tmp_path) -> None:
    """A fine-tune trains in its run directory (``--out DIR`` resumes from its checkpoint):
    until run.json is written, readers skip it and say how to resume."""
    out = tmp_path / "cells" / "lite0" / "finetune-mine"
    out.mkdir(parents=True)
    (out / "checkpoint.pt").write_bytes(b"state")
    (out / "metrics.json").write_text("{}")  # an earlier record attempt, killed before run.json
    (out / "rows.csv").write_text("head\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list_runs(tmp_path) == []
    assert "resume it with featpipe finetune --out" in str(caught[0].message)
    write(tmp_path, "finetune", path=out, staging=out, files={"backbone.bin": b"w"})
    (run,) = list_runs(tmp_path)
    assert run.path == out and run.kind == "finetune" and run.metrics.val.mean == 0.75
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
