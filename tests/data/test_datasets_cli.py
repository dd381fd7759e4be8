"""Bad input through the real entry point: ``featpipe datasets describe`` and ``extract`` on
symlink loops, broken links, paths outside a manifest and duplicate rows (exit code, stderr)."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from conftest import TINY, console_script, flags, write_image


def _broken_links(tree: Path) -> None:
    (tree / "ants" / "loop").symlink_to(".")
    (tree / "ants" / "gone.png").symlink_to("nowhere.png")
    (tree / "bees" / "a.png").symlink_to("b.png")
    (tree / "bees" / "b.png").symlink_to("a.png")


def test_describe_reports_loops_and_broken_links_instead_of_a_traceback(tree: Path) -> None:
    _broken_links(tree)
    done = console_script("datasets", "describe", tree)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "tiny: 12 images, imagefolder, task classification, 2 classes (ants, bees)"
    assert lines[1] == "splits: train 8, val 2, test 2 (stratified)"
    assert "skipped: 4 files" in lines[2]
    assert "  ants/gone.png: broken symlink: its target nowhere.png does not exist" in lines
    assert "  ants/loop: directory symlink loop: leads back to ants, which is read once" in lines


def test_extract_records_loops_and_broken_links_in_the_entry(tree: Path, tmp_path: Path) -> None:
    _broken_links(tree)
    cache = tmp_path / "cache"
    done = console_script("extract", tree, *flags(TINY), "--cache-dir", cache)
    assert done.returncode == 0, done.stderr
    assert "N=12 D=256" in done.stdout and "4 skipped" in done.stdout
    (entry,) = cache.glob("tiny/*.h5")
    with h5py.File(entry, "r") as f:
        skipped = dict(
            zip(f["skipped/relpath"].asstr()[:], f["skipped/reason"].asstr()[:], strict=True)
        )
        assert len(set(f["relpath"].asstr()[:])) == 12
    assert sorted(skipped) == ["ants/gone.png", "ants/loop", "bees/a.png", "bees/b.png"]
    assert skipped["bees/a.png"].startswith("symlink loop")


def test_manifest_outside_paths_and_duplicates_are_one_line_errors(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(4):
        write_image(root / f"{i}.png", seed=i)
    write_image(tmp_path / "outside.png", seed=7)
    manifest = root / "m.csv"
    manifest.write_text("path,label\n0.png,a\n../outside.png,b\n1.png,b\n2.png,a\n")
    done = console_script("datasets", "describe", manifest)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"error: --allow-outside is off, and {manifest} names files outside {root} on line 3 "
        "(e.g. ../outside.png): move them under the manifest's folder, or allow files outside it"
    ]
    allowed = console_script("datasets", "describe", manifest, "--allow-outside")
    assert allowed.returncode == 0 and "4 images" in allowed.stdout
    manifest.write_text("path,label,split\n0.png,a,train\n./0.png,a,test\n1.png,b,train\n")
    done = console_script("datasets", "describe", manifest)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "lines 2 and 3 list the same file 0.png with different splits" in done.stderr
    manifest.write_text("path,label\n0.png,a\n0.png,a\n1.png,b\n2.png,\n3.png,NaN\n")
    done = console_script("datasets", "describe", manifest)
    assert done.returncode == 0 and done.stderr == ""
    assert "unlabelled: 2 images without a label (split 'predict': excluded from fitting)" in (
        done.stdout
    )
    assert f"note: {manifest}: dropped 1 exact duplicate row(s) (line 3)" in done.stdout


def test_extract_shows_a_corrected_duplicate_as_one_warning_line(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(4):
        write_image(root / f"{i}.png", seed=i)
    manifest = root / "m.csv"
    manifest.write_text("path,label\n0.png,a\n1.png,b\n./0.png,a\n2.png,a\n3.png,b\n")
    done = console_script("extract", manifest, *flags(TINY), "--cache-dir", tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "warning" in line] == [
        f"warning: {manifest}: dropped 1 exact duplicate row(s) (line 4); each file is read once"
    ]
    assert "N=4 D=256" in done.stdout


def test_fit_leaves_unlabelled_rows_out(tmp_path: Path) -> None:
    rows = ["path,label"]
    for i in range(24):
        write_image(tmp_path / "ds" / f"{i}.png", seed=i)
        rows.append(f"{i}.png,{'' if i == 23 else ('cat' if i % 2 else 'dog')}")
    (tmp_path / "ds" / "m.csv").write_text("\n".join(rows) + "\n")
    done = console_script(
        "fit", tmp_path / "ds" / "m.csv", *flags(TINY), "--head", "logreg",
        "--cache-dir", tmp_path / "cache", "--runs-dir", tmp_path / "runs",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "chosen: logreg" in done.stdout


@pytest.mark.parametrize("command", ["extract", "fit", "finetune"])
def test_every_command_that_reads_data_refuses_outside_paths(tmp_path: Path, command) -> None:
    root = tmp_path / "ds"
    for i in range(4):
        write_image(root / f"{i}.png", seed=i)
    write_image(tmp_path / "outside.png", seed=7)
    manifest = root / "m.csv"
    manifest.write_text("path,label\n0.png,a\n1.png,b\n2.png,a\n3.png,b\n../outside.png,b\n")
    out = ["--cache-dir", tmp_path / "cache"] if command != "finetune" else []
    out += ["--runs-dir", tmp_path / "runs"] if command != "extract" else []
    done = console_script(command, manifest, "-b", "test_efficientnet", "-w", "none", *out)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith(
        f"error: --allow-outside is off, and {manifest} names files outside {root} on line 6"
    )
    if command == "extract":  # the same flag lets them in
        allowed = console_script(command, manifest, *flags(TINY), *out, "--allow-outside")
        assert allowed.returncode == 0, allowed.stderr
        assert "N=5 D=256" in allowed.stdout
