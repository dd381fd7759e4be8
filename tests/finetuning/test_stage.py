"""The fine-tune stage end to end: checkpoint safety, learning-rate chunks, the best epoch, the
LP-FT start and hold-out, the CAM figure, and the optimizer state across unfreezing stages."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import featpipe
from conftest import TINY, TINY_EXTRACT, TINY_FINETUNE, colour_tree, console_script, make_tree
from featpipe.errors import ArgumentError, StorageError
from featpipe.finetuning.blocks import all_blocks
from featpipe.finetuning.cam import pick_tiles
from featpipe.finetuning.checkpoint import Checkpointer
from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.stage import CamFigureWarning, finetune
from featpipe.finetuning.trainer import Trainer
from featpipe.fitting.stage import fit, with_holdout
from featpipe.runs.record import load_run

BASE = TINY_FINETUNE


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "imgs", classes=("a", "b", "c"), per_class=7)


def fit_head(data: Path, tmp_path: Path, **options) -> Path:
    """A linear head on the tiny model's cached features: the run LP-FT starts from."""
    run, _ = fit(
        data,
        "test_efficientnet",
        head={"head": "linear", "epochs": 20},
        runs_dir=tmp_path / "runs",
        extract_options=TINY_EXTRACT | {"cache_dir": tmp_path / "cache"},
        **options,
    )
    return run.path


class Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_is_never_unpickled(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "payload-ran"
    torch.save({"config": Payload(marker), "state": {}}, out / "checkpoint.pt")
    proc = console_script(
        "finetune",
        data,
        "-b",
        "test_efficientnet",
        "-w",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--out",
        out,
    )
    assert not marker.exists()  # nothing in the file ran
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "checkpoint.pt" in lines[0] and "safely" in lines[0]
    assert "weights_only=False" not in proc.stderr  # never suggests the unsafe loader


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_damaged_checkpoint_is_one_line_not_a_traceback(damage, tmp_path):
    out = tmp_path / "run"
    checkpointer = Checkpointer(out)
    checkpointer.save({"model": {"w": torch.zeros(1000)}, "state": {"epoch": 1}})
    whole = checkpointer.path.read_bytes()
    damaged = {"truncated": whole[: len(whole) // 2], "empty": b"", "text": b"hello world"}
    checkpointer.path.write_bytes(damaged[damage])
    with pytest.raises(StorageError, match="not a fine-tune checkpoint featpipe can read") as info:
        checkpointer.load(torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_lr_mult_chunks_are_cut_over_the_blocks_that_train(data, tmp_path):
    mults = [0.1, 0.33, 1.0]
    for name, config, epoch in (
        ("at-once", FinetuneConfig(**BASE, unfreeze="last:3", lr_mult=mults), 0),
        ("gradual", FinetuneConfig(**BASE, gradual="0:head,1:last:3", lr_mult=mults), 1),
    ):
        trainer = Trainer(make_plan(data, config, tmp_path / name))
        trainer.enter(epoch, None)
        last3 = [b.name for b in all_blocks(trainer.model)[-4:-1]]
        groups = {g["name"]: g["base_lr"] for g in trainer.optimizer.param_groups}
        assert list(groups) == [*last3, "head"]
        # The three unfrozen blocks get 0.1, 0.33 and 1 (input side first); the head the last.
        assert [groups[n] for n in last3] == pytest.approx([0.005, 0.0165, 0.05])
        assert groups["head"] == pytest.approx(0.05)


def test_best_epoch_breaks_accuracy_ties_on_val_loss(tmp_path):
    data = colour_tree(tmp_path / "colours")
    run = fit_head(data, tmp_path)
    config = FinetuneConfig(**BASE | {"epochs": 3, "lr": 0.01}, schedule="none", from_run=str(run))
    _, result = finetune(data, config, tmp_path / "ft")
    history = result.history
    assert result.start_val == 1.0 and history["val_metric"] == [1.0, 1.0, 1.0]  # saturated
    best = int(np.argmin(history["val_loss"]))
    assert result.best_epoch == best  # the lowest val loss, not the first (or the start) 1.0
    assert result.val_score == 1.0


def test_start_line_is_printed_for_a_start_score_of_zero(tmp_path):
    data = colour_tree(tmp_path / "colours")
    run = fit_head(data, tmp_path)
    # Negate the head LP-FT starts from (selection's, trained on train alone: fit refitted the
    # run's head on train + val): every prediction becomes the least likely class (accuracy 0).
    weights = run / "selection-head" / "head.safetensors"
    state = load_file(str(weights))
    save_file({k: -v if k.startswith("head.") else v for k, v in state.items()}, str(weights))
    proc = console_script(
        "finetune",
        data,
        "--from",
        run,
        "--epochs",
        "1",
        "--no-augment",
        "--lr",
        "1e-6",
        "--batch-size",
        "8",
        "--out",
        tmp_path / "ft",
    )
    assert proc.returncode == 0, proc.stderr
    assert "start (the --from head): val accuracy 0.0000" in proc.stdout


def test_lp_ft_validates_on_exactly_the_images_fit_held_out(tmp_path):
    data = tmp_path / "tt"
    make_tree(data, classes=("a", "b", "c"), per_class=20, split="train")
    make_tree(data, classes=("a", "b", "c"), per_class=3, split="test", seed=9)
    run = fit_head(data, tmp_path, holdout=0.1)
    plan = make_plan(data, FinetuneConfig(**BASE, from_run=str(run)), tmp_path / "ft")
    features = featpipe.extract(data, cache_dir=tmp_path / "cache", **TINY).load()
    marked = with_holdout(features, 0.1)
    held = set(marked.relpath[marked.split == "val"])
    assert plan.holdout == 0.1 and {i.relpath for i in plan.val} == held
    assert not held & {i.relpath for i in plan.train}


def test_lp_ft_refuses_a_run_chosen_on_a_val_split_the_data_no_longer_has(tmp_path):
    with_val = make_tree(tmp_path / "with-val", classes=("a", "b", "c"), per_class=8)
    run = fit_head(with_val, tmp_path)
    without = tmp_path / "without-val"
    make_tree(without, classes=("a", "b", "c"), per_class=8, split="train")
    with pytest.raises(ArgumentError, match=r"a val split that .* no longer has"):
        make_plan(without, FinetuneConfig(**BASE, from_run=str(run)), tmp_path / "ft")


def test_pick_tiles_takes_every_class_correct_and_wrong():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    pred = np.array([0, 1, 0, 1, 1, 0, 2, 2])
    rows = pick_tiles(labels, pred)
    assert [(r.label, r.correct, r.wrong) for r in rows] == [
        (0, [0, 2], [1]),
        (1, [3, 4], [5]),
        (2, [6, 7], []),
    ]
    many = np.repeat(np.arange(12), 3)
    wrong_in = {3, 7}  # the classes with errors come first when classes are cut
    guess = np.array([(c + 1) % 12 if c in wrong_in else c for c in many])
    picked = pick_tiles(many, guess, max_classes=4)
    assert len(picked) == 4 and wrong_in <= {r.label for r in picked}


def test_cam_figure_covers_every_class_on_a_fine_grid(data, tmp_path):
    run, result = finetune(data, FinetuneConfig(**BASE | {"epochs": 1}), tmp_path / "ft")
    assert result.cam is not None and (run.path / result.cam.file).stat().st_size > 0
    assert result.cam.classes == ["a", "b", "c"]
    # At 32 px the final map is 1×1; the maps are computed where it has at least 7 cells.
    assert result.cam.grid >= 7
    assert json.loads((run.path / "metrics.json").read_text())["cam_figure"]["classes"] == [
        "a",
        "b",
        "c",
    ]


def test_cam_says_it_does_not_apply_after_conv_head_and_the_run_is_written(data, tmp_path):
    config = FinetuneConfig(
        **BASE | {"backbone": "mobilenetv3_small_050", "image_size": 64, "epochs": 2}
    )
    run, result = finetune(data, config, tmp_path / "mnv3")
    assert load_run(run.path).kind == "finetune"
    assert result.cam is None and "conv_head" in result.cam_note


def test_a_failing_cam_figure_never_costs_the_trained_run(data, tmp_path, monkeypatch):
    import featpipe.finetuning.stage as stage

    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(stage, "draw_cam", broken)
    with pytest.warns(CamFigureWarning, match="matplotlib exploded"):
        run, result = finetune(data, FinetuneConfig(**BASE | {"epochs": 1}), tmp_path / "ft")
    assert load_run(run.path).metrics.cam_note == result.cam_note
    assert not (run.path / "cam.png").exists()


def test_gradual_unfreezing_keeps_the_optimizer_state_torch_optim_would(data, tmp_path):
    """After a stage change, the parameters already training have exactly the state a
    ``torch.optim`` optimizer kept across ``add_param_group`` would have, and the next step
    matches that reference."""
    config = FinetuneConfig(**BASE, gradual="0:head,1:last:1", schedule="none", bn="freeze-stats")
    trainer = Trainer(make_plan(data, config, tmp_path / "ft"))
    stage = trainer.enter(0, None)
    trainer.train_epoch(0, stage)
    reference = copy.deepcopy(trainer.optimizer)  # copies the parameters and their state
    head = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    ref_head = [p for g in reference.param_groups for p in g["params"]]
    assert all(reference.state[q]["step"] > 0 for q in ref_head)

    trainer.enter(1, stage)
    optimizer = trainer.optimizer
    new = [p for g in optimizer.param_groups for p in g["params"] if not any(p is h for h in head)]
    assert new  # the stage change unfroze a block
    ref_new = [p.detach().clone() for p in new]
    reference.add_param_group({"params": ref_new, "lr": config.lr, "weight_decay": config.wd})
    for p, q in zip(head, ref_head, strict=True):
        state, expected = optimizer.state[p], reference.state[q]
        assert state.keys() == expected.keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(state[k], expected[k]) for k in state)

    generator = torch.Generator().manual_seed(0)
    for p, q in zip(head + new, ref_head + ref_new, strict=True):
        p.grad = torch.randn(p.shape, generator=generator)
        q.grad = p.grad.clone()
    optimizer.step()
    reference.step()
    for p, q in zip(head + new, ref_head + ref_new, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=1e-7)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(optimizer.state[p][key], reference.state[q][key])
