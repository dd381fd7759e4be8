"""Fine-tuning: freezing, gradual unfreezing, BatchNorm modes, learning-rate groups, LP-FT,
resume, inspect, CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import featpipe
from conftest import (
    TINY,
    TINY_EXTRACT,
    TINY_FINETUNE,
    colour_tree,
    kill_after_first_checkpoint,
    make_tree,
)
from featpipe.backbones.build import BackboneSpec
from featpipe.data.transforms import ImageToUint8
from featpipe.errors import ArgumentError
from featpipe.finetuning.blocks import all_blocks
from featpipe.finetuning.cam import NotApplicable, class_activation_maps, linear_view
from featpipe.finetuning.config import FinetuneConfig, parse_schedule
from featpipe.finetuning.inspect import describe
from featpipe.finetuning.model import FinetuneModel, fresh_head
from featpipe.finetuning.plan import make_plan
from featpipe.finetuning.stage import finetune
from featpipe.finetuning.trainer import Trainer
from featpipe.fitting.stage import fit
from featpipe.heads.preprocess import Preprocessor

BASE = TINY_FINETUNE | {"epochs": 3}


def trainer_for(data: Path, config: FinetuneConfig, out: Path) -> Trainer:
    return Trainer(make_plan(data, config, out))


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """A finished run's trained weights: its backbone and its head."""
    backbone = load_file(str(run / "backbone.safetensors"))
    return backbone | {
        f"head/{k}": v for k, v in load_file(str(run / "head/head.safetensors")).items()
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "imgs", classes=("a", "b", "c"), per_class=7)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, after: dict, names) -> set[str]:
    return {n for n in names if not torch.equal(before[n], after[n])}


def test_frozen_parameters_are_bitwise_unchanged_under_gradual_unfreezing(data, tmp_path):
    config = FinetuneConfig(
        **BASE | {"epochs": 4}, gradual="0:head,1:last:2,2:all", bn="freeze-stats"
    )
    trainer = trainer_for(data, config, tmp_path / "run")
    blocks = all_blocks(trainer.model)
    body = [p for b in blocks[:-1] for p in b.params]
    last2 = [p for b in blocks[-3:-1] for p in b.params]
    start = snapshot(trainer.model)
    trainer.run(stop_after=1)
    after_head = snapshot(trainer.model)
    assert changed(start, after_head, body) == set()
    assert changed(start, after_head, blocks[-1].params) == set(blocks[-1].params)
    trainer.run(stop_after=1)
    after_last2 = snapshot(trainer.model)
    moved = changed(after_head, after_last2, body)
    assert moved and moved <= set(last2)
    frozen_bn = [p for p in last2 if ".bn" in p]
    assert changed(after_head, after_last2, frozen_bn) == set()  # freeze-stats: γ, β fixed
    trainer.run(stop_after=1)  # (run() reloads the checkpoint: what a new process would do)
    assert changed(after_last2, snapshot(trainer.model), body) - set(last2)  # all unfrozen


def test_bn_modes(data, tmp_path):
    for mode in ("freeze-stats", "freeze-affine", "train"):
        config = FinetuneConfig(**BASE | {"epochs": 1}, unfreeze="all", bn=mode)
        trainer = trainer_for(data, config, tmp_path / mode)
        names = [n for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
        before = snapshot(trainer.model)
        trainer.run()
        after = snapshot(trainer.model)
        stats = [f"{n}.{s}" for n in names for s in ("running_mean", "running_var")]
        affine = [f"{n}.{p}" for n in names for p in ("weight", "bias")]  # γ and β
        if mode == "freeze-stats":
            assert changed(before, after, stats + affine) == set()
        elif mode == "freeze-affine":
            assert changed(before, after, stats) == set(stats)
            assert changed(before, after, affine) == set()
        else:
            assert changed(before, after, stats) == set(stats)
            assert changed(before, after, affine) == set(affine)


def test_learning_rate_groups(data, tmp_path):
    trainer = trainer_for(
        data, FinetuneConfig(**BASE, unfreeze="all", lr_mult=[0.1, 0.33, 1.0]), tmp_path / "a"
    )
    trainer.enter(0, None)
    groups = trainer.optimizer.param_groups
    lrs = [g["base_lr"] for g in groups]
    assert lrs[0] == pytest.approx(0.005) and lrs[-1] == pytest.approx(0.05)
    assert sorted(set(np.round(lrs, 6))) == [0.005, 0.0165, 0.05]
    assert lrs == sorted(lrs)  # the input side learns slowest
    assert groups[-1]["name"] == "head"
    staged = trainer_for(
        data, FinetuneConfig(**BASE, gradual="0:head,1:all", lr_mult=[0.1, 1.0]), tmp_path / "c"
    )
    staged.enter(0, None)
    assert [(g["name"], g["base_lr"]) for g in staged.optimizer.param_groups] == [("head", 0.05)]
    decay = trainer_for(
        data, FinetuneConfig(**BASE, unfreeze="all", layer_decay=0.5), tmp_path / "b"
    )
    decay.enter(0, None)
    scales = sorted({round(g["base_lr"] / 0.05, 8) for g in decay.optimizer.param_groups})
    n = len(all_blocks(decay.model))
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** (n - 1))


def fit_head(data: Path, tmp_path: Path, epochs: int, precision: str = "fp32"):
    """A linear head on the tiny model's cached features (the run LP-FT starts from)."""
    extract = TINY_EXTRACT | {"cache_dir": tmp_path / "c"}
    return fit(
        data,
        "test_efficientnet",
        head={"head": "linear", "epochs": epochs},
        runs_dir=tmp_path / "runs",
        extract_options=extract | {"precision": precision},
    )


def test_lp_ft_starts_from_exactly_the_saved_head(data, tmp_path):
    run, result = fit_head(data, tmp_path, epochs=3)
    trainer = trainer_for(data, FinetuneConfig(**BASE, from_run=str(run.path)), tmp_path / "ft")
    cached = featpipe.extract(data, cache_dir=tmp_path / "c", **TINY).load()
    transform = ImageToUint8(trainer.backbone.data_config, True)
    images = torch.stack([transform(str(data / p)) for p in cached.relpath[:6]])
    trainer.model.eval()
    with torch.no_grad():
        out = trainer.forward(images).numpy()
    # the data's own val split chose it, so fit refitted it on train + val: LP-FT starts from
    # the head selection fitted on train alone (it validates on those val images)
    assert result.trained_on == "train+val"
    expected = result.selection_heads[0].decision_function(cached.X[:6])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # The run names the backbone: left out, it is taken from the run; a different one is refused.
    implied = {k: v for k, v in BASE.items() if k not in ("backbone", "image_size")}
    named = make_plan(data, FinetuneConfig(**implied, from_run=str(run.path)), tmp_path / "ft2")
    assert (named.config.backbone, named.config.image_size) == ("test_efficientnet", 32)
    assert named.config.crop_pct == 0.95  # the run's crop too: the pixels its head was fitted on
    with pytest.raises(ArgumentError, match=r"^crop_pct 1.0: run .* fitted with crop_pct 0.95"):
        make_plan(
            data,
            FinetuneConfig(**implied, from_run=str(run.path), crop_pct=1.0),
            tmp_path / "x",
        )
    with pytest.raises(ArgumentError, match="was fitted on test_efficientnet"):
        make_plan(
            data,
            FinetuneConfig(**BASE | {"backbone": "resnet18"}, from_run=str(run.path)),
            tmp_path / "x",
        )


def test_lp_ft_never_ends_below_the_head_it_started_from(tmp_path):
    data = colour_tree(tmp_path / "colours")
    # bf16: the features' precision, which LP-FT on a CPU keeps
    run, _ = fit_head(data, tmp_path, epochs=20, precision="bf16")
    config = FinetuneConfig(
        **BASE | {"lr": 100.0, "epochs": 1}, unfreeze="all", from_run=str(run.path)
    )
    assert make_plan(data, config).precision == "bf16"
    _, result = finetune(data, config, tmp_path / "wrecked")
    assert result.start_val == 1.0
    assert result.history["val_metric"][0] < 1.0  # the one epoch made it worse …
    assert result.best_epoch == -1 and result.val_score == 1.0  # … so it was not kept


def test_resume_equals_an_uninterrupted_run(data, tmp_path):
    config = FinetuneConfig(**BASE | {"augment": True}, unfreeze="last:1")
    finetune(data, config, tmp_path / "whole")
    assert not trainer_for(data, config, tmp_path / "parts").run(stop_after=1)
    finetune(data, config, tmp_path / "parts")  # a new process would do the same
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "parts")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_during_finetune_then_resume(data, tmp_path):
    config = FinetuneConfig(**BASE | {"epochs": 4})
    finetune(data, config, tmp_path / "whole")
    kill_after_first_checkpoint(BASE | {"epochs": 4}, data, tmp_path / "killed", timeout=120)
    finetune(data, config, tmp_path / "killed")
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_options_are_clear_errors(data, tmp_path):
    with pytest.raises(ArgumentError, match=r"^unfreeze stage9: no block or module"):
        trainer_for(data, FinetuneConfig(**BASE, unfreeze="stage9"), tmp_path / "x")
    with pytest.raises(ArgumentError, match="epochs must start at 0 and increase"):
        parse_schedule("0:head,3:all,2:last:1")
    with pytest.raises(ArgumentError, match=r"^gradual 2:head: would freeze again"):
        trainer_for(data, FinetuneConfig(**BASE, gradual="0:all,2:head"), tmp_path / "y")
    # Options that need no model fail when the config is made, before anything loads.
    with pytest.raises(ArgumentError, match=r"^bn stats: choose one of"):
        FinetuneConfig(**BASE, bn="stats")
    with pytest.raises(ArgumentError, match=r"^gradual all: start with EPOCH:SPEC"):
        FinetuneConfig(**BASE, gradual="all")
    with pytest.raises(ArgumentError, match=r"^layer_decay 0\.5: give multipliers or layer decay"):
        FinetuneConfig(**BASE, lr_mult=[0.1, 1.0], layer_decay=0.5)


def test_inspect_shapes_and_counts_match_the_model():
    d = describe(BackboneSpec("tv/resnet18", weights="none"), depth=1, unfreeze="layer4")
    backbone = d.root.children[0]
    import torchvision

    reference = torchvision.models.resnet18()
    total = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert backbone.trainable + backbone.frozen == total
    layer4 = next(c for c in backbone.children if c.name == "layer4")
    assert layer4.shape == (1, 512, 7, 7) and layer4.frozen == 0
    assert layer4.trainable == sum(p.numel() for p in reference.layer4.parameters())
    assert backbone.shape == (1, 512)
    assert [b["name"] for b in d.blocks][-3:] == ["layer4.0", "layer4.1", "head"]


def test_cam_uses_the_head_weights_on_the_final_map():
    from featpipe.backbones.build import build_backbone

    backbone = build_backbone(BackboneSpec("tv/resnet18", weights="none"))
    pre = Preprocessor(standardize=True).fit(np.random.default_rng(0).normal(size=(50, 512)))
    head = torch.nn.Sequential(pre.to_module(), fresh_head(512, 3, "linear", "xavier", 1.0))
    weight, bias = linear_view(head)
    z = torch.randn(4, 512)
    torch.testing.assert_close(z @ weight.t() + bias, head(z), rtol=1e-4, atol=1e-4)
    x = torch.randn(2, 3, 64, 64)
    classes = torch.tensor([2, 0])
    maps = class_activation_maps(backbone.module, head, x, classes)
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    # The map of class c, averaged over the final grid, is that class's logit (up to the bias):
    # the CAM identity, checked against the head applied to the pooled features.
    with torch.no_grad():
        fmap = backbone.module.family.trunk(backbone.module.model, x)
        logits = head(backbone.module(x))
    local = torch.einsum("bchw,bc->bhw", fmap, weight[classes]).mean(dim=(1, 2))
    torch.testing.assert_close(local + bias[classes], logits[[0, 1], classes], rtol=1e-3, atol=1e-3)
    model = FinetuneModel(backbone.module, fresh_head(512, 3, "mlp", "kaiming", 1.0))
    with pytest.raises(NotApplicable, match="not linear"):
        class_activation_maps(model.backbone, model.head, x, classes)


def test_lp_ft_never_validates_on_images_the_head_was_trained_on(tmp_path):
    data = tmp_path / "tt"
    make_tree(data, classes=("a", "b", "c"), per_class=12, split="train")
    make_tree(data, classes=("a", "b", "c"), per_class=3, split="test", seed=9)
    extract = TINY_EXTRACT | {"cache_dir": tmp_path / "c"}
    head = {"head": "logreg"}
    cv_run, _ = fit(
        data, "test_efficientnet", head=head, runs_dir=tmp_path / "r", extract_options=extract
    )
    with pytest.raises(ArgumentError, match=r"fit it again with a hold-out"):
        make_plan(data, FinetuneConfig(**BASE, from_run=str(cv_run.path)), tmp_path / "ft1")
    held_run, result = fit(
        data,
        "test_efficientnet",
        head=head,
        holdout=0.15,
        runs_dir=tmp_path / "r",
        extract_options=extract,
    )
    plan = make_plan(data, FinetuneConfig(**BASE, from_run=str(held_run.path)), tmp_path / "ft")
    assert result.selection == "val"
    features = featpipe.extract(data, cache_dir=tmp_path / "c", **TINY).load()
    from featpipe.fitting.stage import with_holdout

    marked = with_holdout(features, 0.15)
    assert set(marked.relpath[marked.split == "val"]) == {i.relpath for i in plan.val}
    # fit refitted its head on train + val: LP-FT starts from the head selection fitted on
    # train alone, kept beside it, since it chooses its epochs on those val images
    assert result.trained_on == "train+val"
    X = features.X
    started = plan.start.head.decision_function(X)
    np.testing.assert_allclose(started, result.selection_heads[0].decision_function(X), atol=1e-6)
    assert not np.allclose(started, result.best_head.decision_function(X), atol=1e-3)


def test_auto_bn_keeps_pretrained_statistics_and_trains_fresh_ones(data, tmp_path):
    from featpipe.backbones.build import load_classifier

    weights = tmp_path / "pretrained.pth"
    torch.save(
        load_classifier(BackboneSpec("test_efficientnet", weights="none")).model.state_dict(),
        weights,
    )
    for source, stats_move in ((str(weights), False), ("none", True)):
        config = FinetuneConfig(**BASE | {"epochs": 1, "weights": source}, unfreeze="all")
        trainer = trainer_for(data, config, tmp_path / f"auto-{stats_move}")
        names = [n for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
        before = snapshot(trainer.model)
        trainer.run()
        after = snapshot(trainer.model)
        stats = [f"{n}.{s}" for n in names for s in ("running_mean", "running_var")]
        affine = [f"{n}.{p}" for n in names for p in ("weight", "bias")]  # γ and β
        assert changed(before, after, stats) == (set(stats) if stats_move else set())
        assert changed(before, after, affine) == set(affine)  # γ trains either way
