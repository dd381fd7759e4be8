"""``finetune --refit``: choose on val, then train the same run again on train + val.

The oracle for the refitted network is a plain trainer on train + val stopped after the chosen
number of epochs (``run(stop_after=k)``): it trains the same epochs of the same schedule, so the
refit must hold exactly its weights (raw, or its EMA where val chose the EMA).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_FINETUNE, kill_after_first_checkpoint, make_tree
from featpipe.cli.app import main
from featpipe.cli.render import Activity
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.refit import REFIT_DIR, refit_plan
from featpipe.finetuning.stage import finetune
from featpipe.finetuning.trainer import Evaluation, Trainer
from featpipe.runs.predictions import FILE, SELECTION_TEST, RunPredictions
from featpipe.runs.record import load_run

BASE = TINY_FINETUNE | {"workers": 0, "unfreeze": "all", "epochs": 4, "ema": 0.5}
# Per epoch (val accuracy, val loss) of the raw weights: by the loss epoch 2 of 4 is best, so
# the refit trains 3 epochs of a 4-epoch schedule.
EPOCH_SCORES = [(0.80, 0.50), (0.84, 0.45), (0.83, 0.40), (0.82, 0.42)]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Train, val and test folders: the refit trains on the first two, both stages test."""
    root = tmp_path / "imgs"
    for split, n, seed in (("train", 6, 0), ("val", 3, 1), ("test", 3, 2)):
        make_tree(root, classes=("a", "b", "c"), per_class=n, split=split, seed=seed)
    return root


def scripted(winner: str):
    """``Trainer.evaluate`` with val scores by epoch (the ``winner`` weights scoring better),
    and real evaluations of test (and of val once training has ended)."""
    real = Trainer.evaluate

    def evaluate(self, items, model=None, tta="none") -> Evaluation:
        if items is not self.plan.val or self.state.epoch >= len(EPOCH_SCORES):
            return real(self, items, model, tta)
        accuracy, loss = EPOCH_SCORES[self.state.epoch]
        is_ema = self.ema is not None and model is self.ema.module
        if is_ema != (winner == "ema"):
            accuracy, loss = accuracy - 0.1, loss + 0.1
        n = len(items)
        return Evaluation({"accuracy": accuracy}, loss, np.zeros((n, 3)), np.arange(n))

    return evaluate


def weights(run_path: Path) -> dict[str, torch.Tensor]:
    """The run's saved network, named as the model's state dict names it (the head's file
    already says ``head.``)."""
    backbone = load_file(str(run_path / "backbone.safetensors"))
    head = load_file(str(run_path / "head" / "head.safetensors"))
    return {f"backbone.{k}": v for k, v in backbone.items()} | head


@pytest.mark.parametrize("winner", ["raw", "ema"])
def test_the_refit_is_the_chosen_epochs_of_the_schedule_on_train_plus_val(
    winner, data, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(Trainer, "evaluate", scripted(winner))
    config = FinetuneConfig(**BASE | {"select_by": "loss", "refit": True})
    run, result = finetune(data, config, tmp_path / "run")
    assert (result.best_epoch, result.kept_weights) == (2, winner)

    plan = make_plan(data, config, tmp_path / "oracle")
    oracle = Trainer(replace(plan, train=plan.train + plan.val))
    assert not oracle.run(stop_after=3)  # 3 epochs of the 4-epoch schedule, from the start
    network = oracle.ema.module if winner == "ema" else oracle.model
    expected = {k: v for k, v in network.state_dict().items() if v.is_floating_point()}
    saved = weights(run.path)
    assert expected.keys() <= saved.keys()
    for name, tensor in expected.items():
        assert torch.equal(saved[name], tensor.cpu()), name

    # the record: trained on train + val; val scores are the choice's, test both stages'
    m = load_run(run.path).metrics
    assert m.trained_on == "train+val" and result.trained_on == "train+val"
    assert m.split_sizes == {"train": 18, "val": 9, "test": 9}
    recorded = RunPredictions.load(run.path / FILE)
    assert set(recorded.splits) == {"val", "test", SELECTION_TEST}
    for split, scores in (
        ("val", m.val),
        ("test", m.test),
        (SELECTION_TEST, m.test_before_refit),
    ):
        part = recorded.splits[split]
        accuracy = float(np.mean(part.outputs.argmax(axis=1) == part.y))
        assert scores is not None and scores.mean == pytest.approx(accuracy)
    assert SELECTION_TEST not in m.intervals  # intervals are the kept network's, as fit's
    chosen, again = load_run(run.path).curves()  # the refit's 3 epochs kept beside the 4 chosen
    assert len(chosen["history"]["epoch"]) == 4 and again["config"]["refit"] is True
    assert again["history"]["epoch"] == [0, 1, 2] and "val_loss" not in again["history"]
    assert again["history"]["image_size"] == [32] * 3
    # the training files of both stages are spent once the run is written
    assert not (run.path / REFIT_DIR).exists() and not (run.path / "checkpoint.pt").exists()


def test_without_refit_nothing_is_trained_again(data, tmp_path) -> None:
    run, result = finetune(data, FinetuneConfig(**BASE | {"epochs": 1}), tmp_path / "run")
    m = load_run(run.path).metrics
    assert (m.trained_on, m.test_before_refit, result.test_before_refit) == ("train", None, None)
    assert set(RunPredictions.load(run.path / FILE).splits) == {"val", "test"}


def test_the_refit_plan(data, tmp_path) -> None:
    plan = make_plan(data, FinetuneConfig(**BASE), tmp_path / "run")
    again = refit_plan(plan, 3)
    assert again.train == plan.train + plan.val and again.val == [] and not again.selects
    assert (again.epochs, again.test, again.out) == (3, plan.test, tmp_path / "run" / REFIT_DIR)
    assert again.config == plan.config  # the same options: the same schedule and seed


def test_a_refit_killed_mid_way_resumes_bit_identical(data, tmp_path) -> None:
    # by the loss these images choose epoch 3 of 3: the kill lands inside a 3-epoch refit
    options = BASE | {"refit": True, "epochs": 3, "augment": True, "rot90": True}
    options |= {"select_by": "loss"}
    whole, _ = finetune(data, FinetuneConfig(**options), tmp_path / "whole")
    out = tmp_path / "killed"
    kill_after_first_checkpoint(options, data, out, timeout=300, checkpoint="refit/checkpoint.pt")
    assert (out / "checkpoint.pt").exists()  # the choosing run's files stay until the end
    killed, _ = finetune(data, FinetuneConfig(**options), out)
    a, b = weights(whole.path), weights(killed.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_early_trains_no_further_when_resumed(data, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(Trainer, "evaluate", scripted("raw"))
    config = FinetuneConfig(**BASE | {"patience": 1, "epochs": 4})  # by accuracy: epoch 1
    assert Trainer(make_plan(data, config, tmp_path / "run")).run()
    resumed = Trainer(make_plan(data, config, tmp_path / "run"))
    assert resumed.run()
    assert resumed.state.epoch == 3 and len(resumed.state.history["epoch"]) == 3


def test_the_command_line_says_what_the_refit_trained(data, tmp_path, capsys, monkeypatch) -> None:
    shown: list[tuple[int, str]] = []  # the progress bar's (total, label)
    monkeypatch.setattr(
        Activity, "update", lambda self, done, total, rate, label=None: shown.append((total, label))
    )
    tiny = ["-b", "test_efficientnet", "-w", "none", "--image-size", "32", "--epochs", "2"]
    tiny += ["--batch-size", "8", "--no-augment", "--workers", "0", "--refit"]
    assert main(["finetune", str(data), *tiny, "--out", str(tmp_path / "run")]) == 0
    assert {(18, "fine-tune epoch 1/2"), (27, "refit on train + val, epoch 1")} <= set(shown)
    printed = " ".join(capsys.readouterr().out.split())
    assert "refitted on train + val (27 images)" in printed, printed
    assert "before the refit, test accuracy" in printed, printed
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["request"]
    assert recorded["refit"] is True
