"""The training transform's augmentation policies: seeded, they are reproducible and change the
pixels; grayscale images go through them; random symmetries are exact."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA_CONFIG_32, write_image
from featpipe.data.train_transform import RandomSymmetries, TrainImages
from featpipe.data.transforms import ImageToUint8

# EfficientNet-Lite's mean and std (ELPV's model): policies fill uncovered pixels with the mean,
# here a gray, so a gray image stays gray.
CONFIG = DATA_CONFIG_32 | {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
POLICIES = ["rand-m9-mstd0.5-inc1", "trivialaugment", "augmix-m5-w4-d2", "original"]


def seeded_call(transform, path: Path, seed: int) -> torch.Tensor:
    """What the fine-tune loop does at each epoch: every generator seeded, then the image."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return transform(str(path))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    gray = tmp_path / "gray.png"
    pixels = np.random.default_rng(3).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(pixels).save(gray)  # mode L, like ELPV's cells
    return {"rgb": write_image(tmp_path / "rgb.png", seed=1, size=(40, 40)), "gray": gray}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_a_policy_is_reproducible_and_changes_the_pixels(policy, kind, images) -> None:
    path = images[kind]
    # the whole image, no flip: without a policy every seed gives the same pixels
    plain = TrainImages(CONFIG, 0.0, 1.0, hflip=0.0, ratio=(1.0, 1.0))
    policed = TrainImages(CONFIG, 0.0, 1.0, hflip=0.0, ratio=(1.0, 1.0), auto_augment=policy)
    base = seeded_call(plain, path, 0)
    outs = [seeded_call(policed, path, seed) for seed in range(6)]
    for seed, out in enumerate(outs):
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
        assert torch.equal(out, seeded_call(policed, path, seed))  # same seed, same pixels
        assert torch.equal(seeded_call(plain, path, seed), base)
        if kind == "gray":  # went through as RGB, filled with gray: it stays gray
            assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert sum(not torch.equal(out, base) for out in outs) >= 3  # the policy changed them
    assert len({out.numpy().tobytes() for out in outs}) >= 3  # and differently per seed


def test_random_symmetries_of_the_eval_transform_are_exact(images) -> None:
    eval_images = ImageToUint8(CONFIG, draft=False)
    reference = eval_images(str(images["rgb"]))
    t = reference.transpose(-2, -1)
    symmetries = [reference, reference.flip(-1), reference.flip(-2), reference.flip(-1, -2)]
    symmetries += [t, t.flip(-1), t.flip(-2), t.flip(-1, -2)]
    allowed = {s.numpy().tobytes() for s in symmetries}
    drawn = RandomSymmetries(eval_images)
    seen = {seeded_call(drawn, images["rgb"], seed).numpy().tobytes() for seed in range(120)}
    assert seen == allowed  # only the 8 symmetries, and every one of them
