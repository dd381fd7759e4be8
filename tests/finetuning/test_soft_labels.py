"""``finetune --soft-labels``: listed training images train on their class probabilities
(smoothed and mixed as one-hot targets are), the rest on their labels; val and test are scored
on the hard labels; the file is part of the run (a resume with another one is refused)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_FINETUNE, console_script, make_tree
from featpipe.cli.app import main
from featpipe.errors import ArgumentError, StorageError
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.refit import refit_plan
from featpipe.finetuning.stage import finetune
from featpipe.finetuning.trainer import Trainer

BASE = TINY_FINETUNE | {"workers": 0}
CLASSES = ("a", "b", "c")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "imgs", classes=CLASSES, per_class=7)


def soft_file(data: Path, rows: dict[str, list[float]], name: str = "soft.csv") -> Path:
    """A soft-labels CSV with columns in reverse class order (the reader reorders them)."""
    lines = ["path," + ",".join(reversed(CLASSES))]
    for path, probs in rows.items():
        lines.append(f"{path}," + ",".join(f"{p:g}" for p in reversed(probs)))
    out = data / name
    out.write_text("\n".join(lines) + "\n")
    return out


def every_image(data: Path, probs: Callable[[int], list[float]]) -> dict[str, list[float]]:
    """``probs(label)`` for every image of ``data``, keyed by its path under ``data``."""
    return {
        p.relative_to(data).as_posix(): probs(CLASSES.index(p.parent.name))
        for p in sorted(data.rglob("*.png"))
    }


def doubtful(label: int) -> list[float]:
    """Most of the mass on the label, the rest on the next class."""
    out = [0.0, 0.0, 0.0]
    out[label], out[(label + 1) % 3] = 0.7, 0.3
    return out


def one_hot(label: int) -> list[float]:
    return [float(label == k) for k in range(3)]


def trainer_for(data: Path, out: Path, **options) -> Trainer:
    return Trainer(make_plan(data, FinetuneConfig(**BASE | options), out))


def test_training_targets_are_the_soft_rows_smoothed_and_labels_elsewhere(data, tmp_path) -> None:
    first, *_ = sorted(data.rglob("*.png"))
    listed = first.relative_to(data).as_posix()
    csv = soft_file(data, {listed: [0.5, 0.25, 0.25]})
    trainer = trainer_for(data, tmp_path / "run", soft_labels=str(csv), smoothing=0.3)
    train = trainer.plan.train
    index = [i for i, item in enumerate(train) if item.relpath == listed] + [
        next(i for i, item in enumerate(train) if item.relpath != listed)
    ]
    assert len(index) == 2, "the listed image must be a training image here"
    expected = np.zeros((2, 3), dtype=np.float32)
    expected[0] = [0.5, 0.25, 0.25]
    expected[1, train[index[1]].label] = 1.0
    expected = expected * 0.7 + 0.1  # timm's smoothing: keep 1 - s, spread s over 3 classes
    torch.testing.assert_close(trainer.train_targets(index), torch.from_numpy(expected))
    assert trainer.config.soft_labels_sha256 is not None  # the plan identifies the file


def test_mixup_mixes_the_soft_rows_with_the_drawn_lambda(data, tmp_path) -> None:
    csv = soft_file(data, every_image(data, doubtful))
    trainer = trainer_for(data, tmp_path / "run", soft_labels=str(csv), mixup=0.4, smoothing=0.2)
    y = trainer.train_targets(list(range(9)))
    x = torch.randn(9, 3, 32, 32)
    np.random.seed(7)
    np.random.rand()  # timm draws whether to mix, then lambda from Beta(alpha, alpha)
    lam = float(np.random.beta(0.4, 0.4))
    np.random.seed(7)
    mixed, target = trainer.augment_batch(x.clone(), y)
    torch.testing.assert_close(mixed, lam * x[:8] + (1 - lam) * x[:8].flip(0))
    torch.testing.assert_close(target, lam * y[:8] + (1 - lam) * y[:8].flip(0))  # smoothed once


def test_the_loss_trains_on_soft_rows_and_scores_val_on_the_labels(data, tmp_path, losses) -> None:
    calls = losses
    csv = soft_file(data, every_image(data, doubtful))
    trainer_for(data, tmp_path / "run", soft_labels=str(csv), epochs=1, unfreeze="all").run()
    training = [c for c in calls if c[2]]
    assert training and len(training) < len(calls)  # steps, then the val pass
    rows = {tuple(doubtful(k)) for k in range(3)}
    for out, y, grad, value in calls:
        if grad:  # every training image is listed: each target is its soft row
            assert y.ndim == 2 and {tuple(np.round(r, 6)) for r in y.tolist()} <= rows
            expected = -(y * out.log_softmax(1)).sum(1).mean()
        else:  # val: the plain cross-entropy against the hard labels
            assert y.dtype == torch.long
            expected = torch.nn.functional.cross_entropy(out, y)
        torch.testing.assert_close(value, expected)


def test_one_hot_soft_labels_train_as_the_labels_and_real_ones_do_not(data, tmp_path) -> None:
    options = BASE | {"epochs": 1, "unfreeze": "all"}
    runs = {
        "labels": finetune(data, FinetuneConfig(**options), tmp_path / "labels"),
        "one-hot": finetune(
            data,
            FinetuneConfig(**options, soft_labels=str(soft_file(data, every_image(data, one_hot)))),
            tmp_path / "one-hot",
        ),
        "doubtful": finetune(
            data,
            FinetuneConfig(
                **options, soft_labels=str(soft_file(data, every_image(data, doubtful), "d.csv"))
            ),
            tmp_path / "doubtful",
        ),
    }
    weights = {k: load_file(str(run.path / "backbone.safetensors")) for k, (run, _) in runs.items()}
    for name, value in weights["labels"].items():
        torch.testing.assert_close(weights["one-hot"][name], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(weights["doubtful"][k], v) for k, v in weights["labels"].items())
    losses = {k: result.history["train_loss"] for k, (_, result) in runs.items()}
    assert losses["one-hot"] == pytest.approx(losses["labels"], rel=1e-5)
    assert runs["doubtful"][1].soft_labelled == runs["doubtful"][1].split_sizes["train"]


def test_the_refit_trains_the_val_images_on_their_soft_rows(data, tmp_path) -> None:
    csv = soft_file(data, every_image(data, doubtful))
    plan = make_plan(data, FinetuneConfig(**BASE, soft_labels=str(csv), refit=True), tmp_path / "r")
    again = Trainer(refit_plan(plan, 1))
    val_image = next(i for i, item in enumerate(again.plan.train) if item in plan.val)
    label = again.plan.train[val_image].label
    torch.testing.assert_close(again.train_targets([val_image]), torch.tensor([doubtful(label)]))


def test_a_resume_with_a_changed_file_is_refused(data, tmp_path) -> None:
    csv = soft_file(data, every_image(data, doubtful))
    options = {"soft_labels": str(csv), "epochs": 2}
    assert trainer_for(data, tmp_path / "run", **options).run(stop_after=1) is False
    soft_file(data, every_image(data, one_hot))  # the same path, other probabilities
    with pytest.raises(StorageError, match="holds a checkpoint of a run with other options"):
        trainer_for(data, tmp_path / "run", **options).run()


def test_a_recorded_config_whose_file_changed_is_refused(data, tmp_path) -> None:
    csv = soft_file(data, every_image(data, doubtful))
    recorded = make_plan(data, FinetuneConfig(**BASE, soft_labels=str(csv)), tmp_path / "a").config
    assert make_plan(data, recorded, tmp_path / "b").config == recorded  # the same file: fine
    soft_file(data, every_image(data, one_hot))
    with pytest.raises(ArgumentError, match="the file changed since the run was planned"):
        make_plan(data, recorded, tmp_path / "c")


def test_a_file_that_labels_no_training_image_is_refused(data, tmp_path) -> None:
    plan = make_plan(data, FinetuneConfig(**BASE), tmp_path / "plain")
    held_out = {item.relpath: doubtful(item.label) for item in plan.val + plan.test}
    csv = soft_file(data, held_out)
    with pytest.raises(ArgumentError, match=r"none of the \d+ training images is listed"):
        make_plan(data, FinetuneConfig(**BASE, soft_labels=str(csv)), tmp_path / "run")


def test_the_command_line_says_how_many_images_trained_on_soft_labels(
    data, tmp_path, capsys
) -> None:
    csv = soft_file(data, every_image(data, doubtful))
    tiny = ["-b", "test_efficientnet", "-w", "none", "--image-size", "32", "--epochs", "1"]
    tiny += ["--batch-size", "8", "--no-augment", "--workers", "0", "--soft-labels", str(csv)]
    assert main(["finetune", str(data), *tiny, "--out", str(tmp_path / "run")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    plan = make_plan(data, FinetuneConfig(**BASE), tmp_path / "plain")
    assert f"trained on soft labels for {len(plan.train)} of {len(plan.train)} images" in printed


def test_the_console_script_refuses_a_bad_file_in_one_line(data) -> None:
    bad = data / "bad.csv"
    bad.write_text("path,a,b\n")  # class c missing
    tiny = ["-b", "test_efficientnet", "-w", "none"]
    proc = console_script("finetune", data, *tiny, "--soft-labels", bad)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"--soft-labels {bad}: header ['path', 'a', 'b']" in proc.stderr
