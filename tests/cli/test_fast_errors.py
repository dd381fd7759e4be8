"""A mistyped option value is refused before the heavy libraries load: the answer to a typo
comes in a fraction of the time a real run needs to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import main_in_new_process


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "lr=abc"], "--set lr=abc: expected a number"),
        (["--head", "knn", "--set", "temperature=-1"], "--set temperature=-1: must be 0"),
        (["--sweep", "lr=x,1"], "--sweep lr=x: expected a number"),
        (["--head", "forest"], "forest"),
    ],
)
def test_fit_refuses_a_bad_head_value_before_loading_torch(
    tree: Path, args: list[str], message: str
) -> None:
    done = main_in_new_process("fit", tree, *args)
    assert done.stdout.split()[-2:] == ["NO-TORCH", "2"], done.stdout + done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("command", ["fit", "finetune", "extract", "advise"])
def test_a_dataset_that_does_not_exist_is_refused_before_loading_torch(
    tmp_path: Path, command: str
) -> None:
    done = main_in_new_process(command, tmp_path / "nowhere")
    assert done.stdout.split()[-2:] == ["NO-TORCH", "2"], done.stdout + done.stderr
    assert f"dataset {tmp_path / 'nowhere'} does not exist" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_predict_with_a_run_that_does_not_exist_is_refused_before_loading_torch(
    tmp_path: Path,
) -> None:
    done = main_in_new_process("predict", tmp_path, "--run", tmp_path / "nowhere")
    assert done.stdout.split()[-2:] == ["NO-TORCH", "2"], done.stdout + done.stderr
    assert "nowhere is not a featpipe run directory" in done.stderr, done.stderr
