"""advise: the quadrant from constructed evidence, and the CLI end to end on tiny data."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_tree
from featpipe.cli.app import main
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.recipe import recipe
from featpipe.options import declared
from featpipe.reports.advise import STRATEGIES, CommandContext, _command, advise, decide


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
            "-w",
            "offline",
            "--image-size",
            "32",
            "--precision",
            "fp32",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "transfer gain" in out and "ImageNet head confidence" in out
    assert "quadrant: small dataset" in out and "next:" in out
    # Following the advice reuses this cache: the command keeps what advise was given.
    command = out.split("next:", 1)[1].strip()
    for kept in (
        f"featpipe fit {data} ",  # the folder as given, though the CLI passed advise its scan
        "--weights offline",
        "--image-size 32",
        "--precision fp32",
        f"--cache-dir {tmp_path / 'cache'}",
        f"--runs-dir {tmp_path / 'runs'}",
    ):
        assert kept in command


def test_advise_reports_progress_of_the_random_init_control(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "parts", classes=("ok", "bad"), per_class=12)
    seen: dict[str, list[tuple[int, int]]] = {}

    def progress(label: str):
        return lambda p: seen.setdefault(label, []).append((p.done, p.total))

    options = {"image_size": 32, "precision": "fp32", "cache_dir": tmp_path / "cache"}
    advise(data, "tf_efficientnet_lite0", "offline", options, progress=progress)
    assert set(seen) == {"pretrained", "random-init control"}
    assert seen["random-init control"][-1] == (24, 24)  # every image, batch by batch


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


def finetune_options(line: str, run: Path) -> dict:
    """The FinetuneConfig fields a printed ``featpipe finetune`` line sets, as the CLI parses
    them (every option, defaults included), and the other parameters."""
    import shlex

    import typer

    from featpipe.cli.app import app

    args = shlex.split(line.replace("RUN", str(run)))
    assert args[:2] == ["featpipe", "finetune"]
    finetune = typer.main.get_command(app).commands["finetune"]
    params = finetune.make_context("finetune", args[2:]).params
    on_cli = [o for o in declared(FinetuneConfig) if o.spec.cli]  # not those the plan fills
    options = {o.name: o.from_cli(params.pop(o.name)) for o in on_cli}
    return options | {"other": params}


@pytest.mark.parametrize("quadrant", [("large", "similar"), ("large", "dissimilar")])
@pytest.mark.parametrize("train_images", [2_000, 60_000])
def test_advised_finetune_commands_are_the_recipe_for_the_size(
    quadrant, train_images, tmp_path: Path
) -> None:
    """The next command advise prints must be one the CLI accepts, option for option, and be
    the recipe for the number of images the fine-tune trains on."""
    context = CommandContext(str(tmp_path), "tf_efficientnet_lite0", runs_dir=tmp_path / "runs")
    line = _command(*quadrant, context, has_val=False, train_images=train_images)
    options = finetune_options(line.splitlines()[-1], tmp_path)
    expected = recipe(train_images, pretrained=quadrant[1] == "similar")
    assert {k: options[k] for k in expected} == expected
    assert options["other"]["runs_dir"] == tmp_path / "runs"


def test_advise_prints_the_recipe_for_the_images_it_counted(tmp_path: Path, monkeypatch) -> None:
    import featpipe.reports.advise as module

    monkeypatch.setattr(module, "SMALL_PER_CLASS", 5)  # tiny data reads as a large dataset
    sizes: list[int] = []  # at this size every count gets the same recipe: record the count

    def recorded(n: int, pretrained: bool = True) -> dict:
        sizes.append(n)
        return recipe(n, pretrained)

    monkeypatch.setattr(module, "recipe", recorded)
    data = make_tree(tmp_path / "parts", classes=("ok", "bad"), per_class=12)
    options = {"image_size": 32, "precision": "fp32", "cache_dir": tmp_path / "cache"}
    advice = advise(data, "tf_efficientnet_lite0", "offline", options)
    assert advice.size == "large"
    line = advice.command.splitlines()[-1]
    n = advice.evidence["train_images"]  # the data's own val split: no hold-out
    assert sizes == [n]
    options = finetune_options(line, tmp_path)
    expected = recipe(n, pretrained=advice.similarity == "similar")
    assert {k: options[k] for k in expected} == expected


@pytest.mark.parametrize("quadrant", sorted(STRATEGIES))
def test_every_advised_command_keeps_the_options_advise_was_given(quadrant, tmp_path) -> None:
    """Following the advice must reuse advise's cache entry and runs folder, not extract again
    at the default size into ./cache."""
    import shlex

    import typer

    from featpipe.cli.app import app
    from featpipe.cli.argv import expand
    from featpipe.extraction.options import ExtractOptions

    given = {
        "weights": "offline",
        "image_size": 96,
        "crop_pct": 1.0,
        "precision": "fp32",
        "cache_dir": tmp_path / "my cache",
        "pool": "max",
        "draft": True,
        "allow_outside": True,
        "batch_size": 8,  # how it runs, not what it reads: not repeated
    }
    context = CommandContext(
        str(tmp_path / "my data"),
        "tf_efficientnet_lite0",
        ExtractOptions(**given),
        runs_dir=tmp_path / "runs",
    )
    commands = typer.main.get_command(app).commands
    for line in _command(*quadrant, context, has_val=False, train_images=5_000).splitlines():
        args = expand(shlex.split(line.split("  # ")[0].replace("RUN", str(tmp_path))))
        name = args[1]
        params = commands[name].make_context(name, args[2:]).params
        assert params["runs_dir"] == tmp_path / "runs" and params["allow_outside"]
        if name == "fit":
            keys = ("weights", "image_size", "crop_pct", "precision", "cache_dir", "pool", "draft")
            for key in keys:
                assert params[key] == given[key], key
            assert params["batch_size"] == "auto"
        elif "--from" not in args:  # from scratch: the size kept, the weights the recipe's
            assert params["image_size"] == 96 and params["weights"] == "none"
            assert params["crop_pct"] == 1.0
