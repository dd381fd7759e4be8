"""The recommended fine-tune recipe: valid options, scaled with the training set's size in the
directions its module documents."""

from __future__ import annotations

import math

import pytest

from featpipe.finetuning.config import FinetuneConfig
from featpipe.finetuning.recipe import CROP_SCALE, EPOCHS, IMAGES_SEEN, MIX_FROM, recipe

SIZES = [100, 1_673, 4_999, 5_000, 19_999, 20_000, 60_000, 1_000_000]


@pytest.mark.parametrize("train_images", SIZES)
@pytest.mark.parametrize("pretrained", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_recipe_is_a_valid_config(train_images, pretrained, symmetric) -> None:
    fields = recipe(train_images, pretrained, symmetric)
    config = FinetuneConfig(**fields)  # validated like any user's options
    assert config.augment and config.crop_scale == CROP_SCALE
    # RandAugment only from 5,000 images: on ELPV's 1,673 the recipe trains without it
    assert (config.auto_augment is None) == (train_images < 5_000)
    assert config.auto_augment is None or config.auto_augment.startswith("rand-m")
    assert config.rot90 is symmetric and config.tta == ("dihedral" if symmetric else "hflip")
    assert config.select_by == "loss" and config.refit  # then trained again on train + val
    if pretrained:
        assert config.gradual and config.layer_decay and config.weights == "auto"
    else:
        assert config.weights == "none" and config.unfreeze == "all" and not config.layer_decay


def test_the_recipe_scales_with_the_training_set() -> None:
    small, medium, large = recipe(1_673), recipe(20_000), recipe(200_000)
    # ELPV's training split: about IMAGES_SEEN images seen
    assert small["epochs"] == round(IMAGES_SEEN / 1_673) == 10
    assert [r["epochs"] for r in (recipe(100), recipe(10**6))] == list(EPOCHS[::-1])
    assert small["epochs"] > medium["epochs"] >= large["epochs"]
    magnitudes = [int(r["auto_augment"].split("-")[1][1:]) for r in (medium, large)]
    assert "auto_augment" not in small and magnitudes[0] < magnitudes[1]
    assert small["layer_decay"] < medium["layer_decay"] < large["layer_decay"] <= 1
    assert small["lr"] < medium["lr"] < large["lr"]
    assert "mixup" not in recipe(MIX_FROM - 1) and recipe(MIX_FROM)["mixup"] > 0
    assert recipe(MIX_FROM)["random_erasing"] > 0
    for n in (300, 1_673, 50_000):  # the EMA averages over about one epoch of steps
        assert 1 / (1 - recipe(n)["ema"]) == pytest.approx(math.ceil(n / 32), rel=0.02)
    assert recipe(1_673, pretrained=False)["epochs"] == 2 * small["epochs"]


def test_a_recipe_needs_images() -> None:
    with pytest.raises(ValueError, match="train_images 0"):
        recipe(0)
