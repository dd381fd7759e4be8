"""The eight symmetries of the square: exact, all distinct, drawn uniformly, averaged for TTA."""

from __future__ import annotations

import numpy as np
import torch

from featpipe.choices import TTA
from featpipe.data.dihedral import DIHEDRAL, TTA_VIEWS, RandomDihedral, apply, averaged


def explicit(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square [..., H, W] written out by hand (transposes and flips)."""
    t = x.transpose(-2, -1)
    return [
        x,
        x.flip(-1),  # mirror left-right
        x.flip(-2),  # mirror top-bottom
        x.flip(-1).flip(-2),  # half turn
        t,  # mirror on the main diagonal
        t.flip(-1),  # quarter turn clockwise
        t.flip(-2),  # quarter turn counter-clockwise
        t.flip(-1).flip(-2),  # mirror on the other diagonal
    ]


def same_set(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    key = lambda t: t.numpy().tobytes()  # noqa: E731
    return sorted(map(key, a)) == sorted(map(key, b))


def test_the_dihedral_views_are_the_eight_symmetries_of_the_square() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.int64).reshape(2, 3, 5, 5)
    views = [apply(x, s) for s in DIHEDRAL]
    assert len({v.numpy().tobytes() for v in views}) == 8
    assert same_set(views, explicit(x))
    assert torch.equal(apply(x, TTA_VIEWS["hflip"][1]), x.flip(-1))  # hflip: mirror left-right
    assert tuple(TTA_VIEWS) == TTA  # the --tta vocabulary names these view sets
    assert [len(TTA_VIEWS[n]) for n in TTA] == [1, 2, 8]


def test_random_symmetries_are_exact_and_uniform() -> None:
    x = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8)
    allowed = {v.numpy().tobytes(): i for i, v in enumerate(explicit(x))}
    torch.manual_seed(0)
    draw = RandomDihedral()
    counts = np.zeros(8, int)
    for _ in range(800):
        out = draw(x)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        counts[allowed[out.numpy().tobytes()]] += 1  # KeyError: not a symmetry of x
    assert counts.min() > 60  # each of the 8 about 100 times (seeded: the same every run)


def test_averaged_is_the_mean_over_the_views() -> None:
    x = torch.randn(4, 3, 7, 7)
    weights = torch.randn(3 * 7 * 7, 5)

    def predict(images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(images.flatten(1) @ weights, dim=1)

    expected = torch.stack([predict(v) for v in explicit(x)]).mean(0)
    torch.testing.assert_close(averaged(predict, x, "dihedral"), expected)
    torch.testing.assert_close(
        averaged(predict, x, "hflip"), (predict(x) + predict(x.flip(-1))) / 2
    )
    assert torch.equal(averaged(predict, x, "none"), predict(x))
    as_numpy = averaged(lambda v: predict(v).numpy(), x, "dihedral")
    np.testing.assert_allclose(as_numpy, expected.numpy(), rtol=1e-6, atol=1e-7)
