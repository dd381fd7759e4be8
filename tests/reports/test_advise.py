"""advise: the quadrant from constructed evidence, and the CLI end to end on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_tree
from featpipe.cli.app import main
from featpipe.reports.advise import STRATEGIES, decide


@pytest.mark.parametrize(
    ("per_class", "gain", "confidence", "quadrant"),
    [
        (120, 0.70, 0.60, ("small", "similar")),  # e.g. dog breeds, a few hundred images
        (6000, 0.70, 0.60, ("large", "similar")),
        (6000, 0.10, 0.08, ("large", "dissimilar")),  # X-rays at scale
        (300, 0.10, 0.08, ("small", "dissimilar")),  # rare industrial defects
        (300, 0.70, 0.05, ("small", "dissimilar")),  # separable, but nothing like ImageNet
        (300, 0.05, 0.90, ("small", "dissimilar")),  # ImageNet-looking, yet pretraining no help
        (300, 0.70, None, ("small", "similar")),  # no source head to ask: gain decides
    ],
)
def test_quadrants_on_constructed_evidence(per_class, gain, confidence, quadrant) -> None:
    assert decide(per_class, gain, confidence) == quadrant
    assert quadrant in STRATEGIES


def test_advise_cli_prints_evidence_quadrant_and_next_command(tmp_path: Path, capsys) -> None:
    data = make_tree(tmp_path / "parts", classes=("ok", "bad"), per_class=20)
    code = main(
        [
            "advise",
            str(data),
            "-b",
            "tf_efficientnet_lite0",
            "--image-size",
            "32",
            "--precision",
            "fp32",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "transfer gain" in out and "ImageNet head confidence" in out
    assert "quadrant: small dataset" in out and "next:" in out and "featpipe " in out


def test_inspect_and_finetune_cli(tmp_path: Path, capsys) -> None:
    assert main(["inspect", "test_resnet", "-w", "none", "--unfreeze", "layer4"]) == 0
    out = capsys.readouterr().out
    assert "layer4" in out and "trainable under 'layer4'" in out
    data = make_tree(tmp_path / "d", classes=("a", "b"), per_class=8)
    code = main(
        [
            "finetune",
            str(data),
            "-b",
            "test_resnet",
            "-w",
            "none",
            "--image-size",
            "32",
            "--gradual",
            "0:head,1:all",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "fine-tune test_resnet" in out and "best epoch" in out
    assert main(["results", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert "finetune" in capsys.readouterr().out
    assert main(["report", "--runs-dir", str(tmp_path / "runs"), "-o", str(tmp_path / "rep")]) == 0


@pytest.mark.parametrize("quadrant", [("large", "similar"), ("large", "dissimilar")])
def test_advised_finetune_commands_parse(quadrant, tmp_path: Path) -> None:
    """The next command advise prints must be one the CLI accepts, option for option."""
    import shlex

    import typer

    from featpipe.cli.app import app
    from featpipe.reports.advise import _command

    line = _command(*quadrant, str(tmp_path), "tf_efficientnet_lite0", has_val=False)
    args = shlex.split(line.splitlines()[-1].replace("RUN", str(tmp_path)))
    assert args[:2] == ["featpipe", "finetune"]
    finetune = typer.main.get_command(app).commands["finetune"]
    params = finetune.make_context("finetune", args[2:]).params
    assert params["lr"] > 0 and params["crop_scale"] == 0.35
