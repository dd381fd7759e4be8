"""The extract stage tells the truth: provenance per run that added rows, cache hits for explicit
requests, rows reused across dataset names, honest summary figures, a bounded speed probe, and
status before the first batch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, flags, main_in_new_process, torchrun, write_image
from featpipe.cache.entry import read_meta
from featpipe.errors import ArgumentError
from featpipe.extraction import provenance, settle
from featpipe.extraction.stage import extract
from featpipe.progress import Phase

AUTO = TINY | {"precision": "auto", "engine": "auto", "batch_size": None}


def run(data: Path, cache_dir: Path, **overrides):
    return extract(data, cache_dir=cache_dir, **(TINY | overrides))


def test_a_rerun_that_adds_no_rows_keeps_the_provenance(tree: Path, cache_dir: Path) -> None:
    first = run(tree, cache_dir)
    made = read_meta(first.entry)["provenance"]
    assert made["settings"]["batch_size"] == 4 and len(made["history"]) == 1
    (tree / "bees" / "bees_002.png").unlink()  # the entry must be rewritten, with nothing to run
    shrunk = run(tree, cache_dir, batch_size=16)
    assert (shrunk.hit, shrunk.n_new, shrunk.n) == (False, 0, 11)
    kept = read_meta(shrunk.entry)["provenance"]
    assert kept == made  # not "batch 16, 0 img/s"
    write_image(tree / "bees" / "bees_100.png", seed=5)
    grown = run(tree, cache_dir, batch_size=16)
    assert grown.n_new == 1
    now = read_meta(grown.entry)["provenance"]
    assert [r["settings"]["batch_size"] for r in now["history"]] == [4, 16]
    assert [r["last_run"]["rows_extracted"] for r in now["history"]] == [12, 1]
    assert now["settings"]["batch_size"] == 16  # the top level: the latest run that added rows


def test_provenance_without_history_still_reads_and_becomes_the_first_record() -> None:
    old = {"settings": {"engine": "onnxruntime", "batch_size": 32}, "last_run": {"rows": 5}}
    nothing = {"settings": {"engine": "torch"}, "last_run": {"rows_extracted": 0}}
    assert provenance.merge(old, nothing) == old
    added = {"settings": {"engine": "torch"}, "last_run": {"rows_extracted": 3}}
    merged = provenance.merge(old, added)
    assert merged["history"] == [old, added] and merged["settings"]["engine"] == "torch"


def test_explicit_request_equal_to_the_entry_key_is_a_hit_without_the_model(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = extract(tree, cache_dir=cache_dir, **AUTO)
    assert made.settings["precision"] == "fp32"
    monkeypatch.setattr(
        "featpipe.backbones.build.build_backbone",
        lambda *a, **k: pytest.fail("the model was built"),
    )
    spelled = run(tree, cache_dir, precision="fp32", engine="torch", batch_size=16)
    assert spelled.hit and spelled.entry == made.entry
    assert spelled.summary().startswith("cache hit:")


def test_the_same_weights_spelled_another_way_are_a_hit_without_the_model(
    tree: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weights file named by its absolute path, then by a relative one: one resolved choice,
    so the second run is the fast hit, not a model build and a probe for 0 new rows."""
    import timm
    import torch

    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "w.pth")
    made = extract(tree, cache_dir=cache_dir, **TINY | {"weights": str(tmp_path / "w.pth")})
    assert made.n_new == 12
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "featpipe.backbones.build.build_backbone",
        lambda *a, **k: pytest.fail("the model was built"),
    )
    again = extract(tree, cache_dir=cache_dir, **TINY | {"weights": "w.pth"})
    assert again.hit and again.entry == made.entry


def test_explicit_request_hit_from_the_cli_imports_no_torch(tree: Path, cache_dir: Path) -> None:
    extract(tree, cache_dir=cache_dir, **AUTO)
    spelled = TINY | {"batch_size": 16}
    done = main_in_new_process("extract", tree, *flags(spelled), "--cache-dir", cache_dir)
    assert "cache hit:" in done.stdout, done.stdout + done.stderr
    assert done.stdout.split()[-2:] == ["NO-TORCH", "0"], done.stdout


def test_same_files_under_another_dataset_name_are_copied_not_extracted(
    tree: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = run(tree, cache_dir)
    folder = made.load()
    manifest = tree / "labels.csv"
    lines = [f"{p},{p.split('/')[0]}" for p in folder.relpath]
    manifest.write_text("path,label\n" + "\n".join(lines) + "\n")
    copy = tmp_path / "copied"  # the same content elsewhere, with new paths and mtimes
    shutil.copytree(tree / "ants", copy / "ants")
    write_image(copy / "wasps" / "new.png", seed=4242)  # one file no entry holds
    monkeypatch.setattr(
        "featpipe.extraction.rows.extract_rows", lambda *a, **k: pytest.fail("rows extracted")
    )
    listed = run(manifest, cache_dir)
    assert listed.entry.parent.name == "tiny-labels" and listed.entry.name == made.entry.name
    assert (listed.n_new, listed.n_copied, listed.n) == (0, 12, 12)
    again = listed.load()
    order = {p: i for i, p in enumerate(folder.relpath)}
    np.testing.assert_array_equal(again.X, folder.X[[order[p] for p in again.relpath]])
    history = read_meta(listed.entry)["provenance"]["history"]
    assert history[-1]["last_run"]["rows_copied"] == 12
    monkeypatch.undo()
    moved = run(copy, cache_dir)
    assert (moved.n_copied, moved.n_new) == (6, 1)  # content, not path, decides


def test_an_unreadable_entry_of_another_dataset_is_passed_over(tree: Path, cache_dir: Path) -> None:
    made = run(tree, cache_dir)
    shutil.rmtree(made.entry.with_suffix(".parts"))  # its rows are gone: nothing to copy
    manifest = tree / "labels.csv"
    rows = [f"{p.relative_to(tree).as_posix()},x" for p in sorted(tree.rglob("*.png"))]
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    listed = run(manifest, cache_dir)
    assert (listed.n_copied, listed.n_new, listed.n) == (0, 12, 12)


def test_loading_timm_is_counted_in_the_summary(tree: Path, cache_dir: Path) -> None:
    """The first computing run in a process imports torch, timm and torchvision (seconds on a
    small machine); the summary's "loading torch and timm" counts them, whichever step would
    import timm first. In a fresh process, a finder notes when timm's import starts: within
    the seconds counted from the announcement of that step."""
    script = (
        "import sys, time, importlib.abc, json\n"
        "started = []\n"
        "class Note(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'timm': started.append(time.perf_counter())\n"
        "sys.meta_path.insert(0, Note())\n"
        "from featpipe.extraction.stage import extract\n"
        "steps = []\n"
        "say = lambda phase: steps.append((time.perf_counter(), phase.message))\n"
        "options = json.loads(sys.argv[3])\n"
        "result = extract(sys.argv[1], options.pop('backbone'), cache_dir=sys.argv[2],\n"
        "                 status=say, **options)\n"
        "loading = next(i for i, (_, m) in enumerate(steps) if m == 'loading torch and timm')\n"
        "print(0 <= started[0] - steps[loading][0] <= result.timings['import_s'])\n"
        "print(result.summary())\n"
    )
    args = [str(tree), str(cache_dir), json.dumps(TINY)]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    inside, summary = done.stdout.strip().splitlines()[:2]
    assert inside == "True"
    assert "(of which loading torch and timm " in summary


def test_summary_rate_and_seconds_cover_the_same_interval(tree: Path, cache_dir: Path) -> None:
    result = run(tree, cache_dir)
    assert result.images_per_second == pytest.approx(result.n_new / result.seconds)
    assert "model_s" in result.timings
    line = result.summary()
    assert f"12 extracted in {result.seconds:.1f} s" in line
    assert f"model build {result.timings['model_s']:.1f} s" in line
    record = read_meta(result.entry)["provenance"]
    wall = record["timings_s"]["wall_s"]
    assert record["last_run"]["images_per_s"] == round(12 / wall, 2)  # the recorded interval


def test_small_dataset_skips_the_probe_and_a_large_one_is_probed_within_budget(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = extract(tree, cache_dir=cache_dir, **AUTO)
    assert "probe_s" not in small.timings
    assert (small.settings["precision"], small.settings["engine"]) == ("fp32", "torch")
    assert "256" in small.settings["probe"]["skipped"]
    monkeypatch.setattr(settle, "PROBE_MIN_IMAGES", 4)
    phases: list[Phase] = []
    probed = extract(tree, cache_dir=cache_dir / "other", status=phases.append, **AUTO)
    assert "probe_s" in probed.timings and "skipped" not in probed.settings["probe"]
    assert probed.settings["probe"]["budget_s"] <= 5.0
    assert any(p.name == "probing" and "at most 5 s" in p.message for p in phases)
    kept = read_meta(probed.entry)["provenance"]["settings"]["probe"]
    assert 0 < kept["spent_s"] <= probed.timings["probe_s"]  # the probe's clock runs inside it


def test_engines_the_probe_left_untimed_are_named_in_every_summary_of_its_memo(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featpipe.runtime import tuning

    monkeypatch.setattr(settle, "PROBE_MIN_IMAGES", 4)
    # A budget no batch fits, whatever the machine's speed: torch's one image is all it times.
    monkeypatch.setattr(tuning, "PROBE_BUDGET_S", 1e-6)
    first = extract(tree, cache_dir=cache_dir, **AUTO)
    assert (first.settings["engine"], first.settings["precision"]) == ("torch", "fp32")
    said = (
        "\nnote: auto timed no engine at its trial batch: openvino, onnxruntime over the probe "
        "budget, so torch ran untested against them (--engine openvino or --engine onnxruntime "
        "to use one)"
    )
    assert first.summary().endswith(said)
    write_image(tree / "bees" / "bees_100.png", seed=5)
    grown = extract(tree, cache_dir=cache_dir, **AUTO)  # settled by the memo: no probe
    assert "probe_s" not in grown.timings and grown.n_new == 1
    assert grown.summary().endswith(said)


def test_status_reports_every_phase_before_the_first_batch(tree: Path, cache_dir: Path) -> None:
    phases: list[Phase] = []
    batches: list[int] = []
    run(tree, cache_dir, status=phases.append, progress=lambda p: batches.append(p.done))
    names = [p.name for p in phases]
    assert names[:2] == ["scanning", "cache"] and "building" in names
    assert batches, "progress still reports batches"
    phases.clear()
    run(tree, cache_dir, status=phases.append)
    assert [p.name for p in phases] == ["scanning", "cache"]  # a hit: nothing else to say


def test_impossible_engine_and_precision_are_refused_before_any_work(
    tree: Path, cache_dir: Path
) -> None:
    # Checked up front: an explicit request may be a cache hit that never reaches the probe.
    for engine, precision in (("onnxruntime", "bf16"), ("openvino", "fp16")):
        with pytest.raises(ArgumentError) as caught:
            run(tree, cache_dir, engine=engine, precision=precision)
        assert caught.value.param == "engine" and "fp32" in str(caught.value)
        assert not cache_dir.exists()


def test_openvino_decodes_ahead_in_a_thread_with_the_same_rows(
    tree: Path, cache_dir: Path, tiny_openvino, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without loader workers, OpenVINO's batches are decoded one step ahead in a thread (torch's
    are not: measured slower); the rows, their order and the features are those of decoding
    between batches, bit for bit."""
    from featpipe.extraction import rows
    from featpipe.runtime.workers import PREFETCH

    real, asked = rows.prefetched, []

    def spy(items, depth, inline=False):
        asked.append(depth)
        return real(items, 0 if inline else depth)

    monkeypatch.setattr(rows, "prefetched", spy)
    one = {"batch_size": 5}  # 3 batches; TINY runs without loader workers
    ahead = run(tree, tiny_openvino(cache_dir / "ahead"), engine="openvino", **one)
    monkeypatch.setattr(rows, "prefetched", lambda items, depth: spy(items, depth, inline=True))
    between = run(tree, tiny_openvino(cache_dir / "between"), engine="openvino", **one)
    a, b = ahead.load(), between.load()
    assert list(a.relpath) == list(b.relpath) and np.array_equal(a.X, b.X)
    torch = run(tree, cache_dir / "torch", **one)
    assert asked == [PREFETCH, PREFETCH, 0]  # OpenVINO twice, then torch
    assert ahead.settings["prefetch"] == PREFETCH and torch.settings["prefetch"] == 0
    assert "0 workers + decoding thread" in ahead.summary()
    assert "0 workers]" in torch.summary()


def test_openvino_shares_fp32_entries_with_torch_and_keeps_its_bf16_apart(
    tree: Path, cache_dir: Path, tiny_openvino, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key rules of featpipe.cache.key: fp32 is one arithmetic whatever the engine, a
    reduced precision is each engine's own, and torch's keys are those it always had."""
    import openvino

    from featpipe.runtime import tuning

    tiny_openvino(cache_dir)  # the IR an earlier run converted: no run here converts again
    monkeypatch.setattr(openvino, "convert_model", lambda *a, **k: pytest.fail("converted"))
    # bf16 entries need OpenVINO's bf16; on a CPU without it the hint computes fp32, which is
    # enough for what this test checks: which entry the rows go to, and what it is called.
    monkeypatch.setattr(tuning, "openvino_has_bf16", lambda: True)
    torch32 = run(tree, cache_dir)
    ov32 = run(tree, cache_dir, engine="openvino")
    assert ov32.hit and ov32.entry == torch32.entry
    fresh = run(tree, tiny_openvino(cache_dir / "fresh"), engine="openvino")  # computed by it
    np.testing.assert_allclose(fresh.load().X, torch32.load().X, rtol=1e-4, atol=1e-6)
    torch16 = run(tree, cache_dir, precision="bf16")
    ov16 = run(tree, cache_dir, engine="openvino", precision="bf16")
    assert len({torch32.entry, torch16.entry, ov16.entry}) == 3 and ov16.n_new == 12
    assert "[openvino bf16, batch 4, 0 workers + decoding thread]" in ov16.summary()
    fields = {r.entry: read_meta(r.entry)["key_fields"] for r in (torch32, torch16, ov16)}
    assert fields[ov16.entry] | {"engine": ""} == fields[torch16.entry] | {"engine": ""}
    assert fields[ov16.entry]["engine"] == "openvino"
    assert "engine" not in fields[torch16.entry] and "engine" not in fields[torch32.entry]
    again = (run(tree, cache_dir, engine=e, precision="bf16") for e in ("openvino", "torch"))
    assert [(r.hit, r.entry) for r in again] == [(True, ov16.entry), (True, torch16.entry)]


def test_a_network_openvino_cannot_convert_is_refused_naming_the_model(
    tree: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import openvino

    from featpipe.cli.app import main

    def refuse(*args, **kwargs):  # how OpenVINO 2026.4 fails on an operation it cannot convert
        raise RuntimeError(
            "Check 'false' failed at src/frontends/common_translators/src/unconverted_ops_"
            "report.cpp:151:\nFrontEnd API failed with OpConversionFailure:\nModel wasn't fully "
            "converted.\nSummary:\n-- No conversion rule found for operations: aten::histc\n"
        )

    monkeypatch.setattr(openvino, "convert_model", refuse)
    code = main(["extract", str(tree), *flags(TINY | {"engine": "openvino"}), "--cache-dir",
                 str(cache_dir)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: --engine openvino cannot convert test_efficientnet (")
    assert "No conversion rule found for operations: aten::histc" in err
    assert not list(cache_dir.glob("tiny/*.h5")) and not list(cache_dir.glob(".openvino/*"))


def test_under_torchrun_the_rate_is_over_the_whole_run_too(tree: Path, tmp_path: Path) -> None:

    cache = tmp_path / "fresh"  # not created yet: the ranks must manage that too
    done = subprocess.run(
        torchrun(2, "extract", str(tree), *flags(TINY), "--cache-dir", str(cache)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    [entry] = cache.glob("*/*.h5")
    record = read_meta(entry)["provenance"]
    wall, rate = record["timings_s"]["wall_s"], record["last_run"]["images_per_s"]
    assert [r["rows"] for r in record["ranks"]] == [6, 6]
    assert rate == round(12 / wall, 2)  # not 12 / the slowest rank's loop
    line = done.stdout.strip().splitlines()[-1]
    found = re.search(r"12 extracted in ([\d.]+) s, ([\d.]+) images/s", line)
    seconds, per_s = map(float, found.groups())
    # The line prints seconds to 0.1 and the rate to 0.1: the rate must lie in what those allow.
    assert 12 / (seconds + 0.05) - 0.05 <= per_s <= 12 / max(seconds - 0.05, 1e-9) + 0.05
