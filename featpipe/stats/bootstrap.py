"""The seeded bootstrap over test images, and the interval each reported score gets.

Intervals are BCa (bias-corrected and accelerated, Efron 1987; Efron & Tibshirani 1993, ch. 14),
not plain percentile. The metrics featpipe reports are bounded and often near their ceiling
(accuracy, AUROC), or ratios of counts that are small on a small test set (balanced accuracy,
macro-F1 with a 3:1 class split as on ELPV); their bootstrap distributions are skewed and their
estimates biased on small test sets. BCa corrects both: the bias by where the test-set estimate
falls among the resamples (z0), the skew by the jackknife's acceleration (a). In simulations of
a 3:1 two-class test set (recall 0.9 and 0.7; 4,000 simulated test sets, 2,000 resamples each),
95% intervals of balanced accuracy covered the truth 92.0% (percentile) and 94.8% (BCa) of the
time at 44 images, 94.6% and 94.9% at 500.
BCa is also what ``scipy.stats.bootstrap`` computes by default, which the tests hold it to.

Resampling is vectorised: images are grouped into atoms (see :mod:`featpipe.stats.kernels`),
resamples are drawn as counts per atom, a chunk of about a million entries at a time (as a
multinomial where atoms are few, else from an index matrix), and each metric is computed for
every row of counts at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from featpipe.errors import ArgumentError
from featpipe.stats.interval import Interval, check_confidence, wilson
from featpipe.stats.kernels import Atoms, kernel
from featpipe.stats.predictions import Metric, Predictions
from featpipe.stats.special import ndtr, ndtri

N_RESAMPLES = 2000
# Fewer resamples leave each 2.5% tail to a handful of values (25 at 1,000).
MIN_RESAMPLES = 1000
CHUNK = 1 << 20  # index-matrix entries drawn at a time (8 MB), whatever the test set's size


@dataclass(frozen=True)
class Replicates:
    """A statistic on the test set, on each bootstrap resample and on the jackknife.

    ``resamples``: one value per resample (NaN where undefined: an AUROC resample with one
    class); ``jackknife``: the statistic with one image of each atom left out; ``weights``:
    images per atom.
    """

    estimate: float
    resamples: np.ndarray
    jackknife: np.ndarray
    weights: np.ndarray

    def minus(self, other: Replicates) -> Replicates:
        """The replicates of the difference ``self − other`` (same resamples, same atoms)."""
        return Replicates(
            self.estimate - other.estimate,
            self.resamples - other.resamples,
            self.jackknife - other.jackknife,
            self.weights,
        )

    def _defined(self) -> np.ndarray:
        values = self.resamples[np.isfinite(self.resamples)]
        if len(values) == 0:
            raise ArgumentError("metric", "is undefined on every resample (a single class?)")
        return values

    def _share_below(self, value: float, values: np.ndarray) -> float:
        """The share of resamples below ``value``, ties counting half (as scipy does), kept
        off 0 and 1 so that the normal quantile stays finite."""
        share = (np.count_nonzero(values < value) + np.count_nonzero(values <= value)) / (
            2 * len(values)
        )
        return float(np.clip(share, 0.5 / len(values), 1 - 0.5 / len(values)))

    def bias(self, values: np.ndarray) -> float:
        """BCa's z0: how far the estimate sits from the resamples' median, in normal units."""
        return float(ndtri(self._share_below(self.estimate, values)))

    def acceleration(self) -> float:
        """BCa's a, from the jackknife's skewness (Efron & Tibshirani 1993, eq. 14.15).

        0 when the jackknife is constant or undefined somewhere (a class of one image)."""
        j, w = self.jackknife, self.weights
        if not np.all(np.isfinite(j)):
            return 0.0
        d = (w @ j) / w.sum() - j
        spread = float(w @ d**2)
        return 0.0 if spread == 0 else float(w @ d**3) / (6 * spread**1.5)

    def interval(self, confidence: float) -> tuple[float, float]:
        """The BCa interval: percentiles of the resamples, moved by z0 and a."""
        values = self._defined()
        z0, a = self.bias(values), self.acceleration()
        z = ndtri(np.array([0.5 - confidence / 2, 0.5 + confidence / 2]))
        levels = ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
        low, high = np.quantile(values, levels)
        return float(low), float(high)

    def p_value(self, null: float = 0.0) -> float:
        """Two-sided p of ``statistic = null``: the smallest 1 − confidence whose BCa interval
        leaves ``null`` out (Efron & Tibshirani 1993, §15.4: the BCa achieved significance
        level), never below 1/resamples, which is as far as resamples can resolve."""
        values = self._defined()
        z0, a = self.bias(values), self.acceleration()
        w = float(ndtri(self._share_below(null, values))) - z0
        denominator = 1 + a * w
        # 0 where the null lies beyond every BCa level: as significant as resamples can say
        one_sided = float(ndtr(w / denominator - z0)) if denominator > 0 else 0.0
        return float(min(1.0, max(2 * min(one_sided, 1 - one_sided), 1 / len(values))))


def check_resampling(n_resamples: int, seed: int) -> None:
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples:
        raise ArgumentError("n_resamples", f"{n_resamples}: give a whole number")
    if n_resamples < MIN_RESAMPLES:
        raise ArgumentError(
            "n_resamples", f"{n_resamples}: give at least {MIN_RESAMPLES} for 95% intervals"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ArgumentError("seed", f"{seed!r}: give a whole number ≥ 0")


def resample(
    group: Sequence[Predictions], metric: Metric, n_resamples: int, seed: int
) -> list[Replicates]:
    """Each model's replicates of ``metric`` on the same resamples of the same test images
    (the pairing of a paired bootstrap). ``seed`` alone fixes the resamples."""
    check_resampling(n_resamples, seed)
    for p in group:
        group[0].same_images(p)
        p.metric(metric.name)  # every model must have what the metric reads (AUROC's scores)
    atoms = Atoms.of(group, metric)
    kernels = [kernel(metric, atoms, i, group[0].n_classes) for i in range(len(group))]
    values: list[list[np.ndarray]] = [[] for _ in group]
    for counts in draw_counts(atoms, n_resamples, np.random.default_rng(seed)):
        for out, k in zip(values, kernels, strict=True):
            out.append(k.values(counts))
    # The estimate comes from the same kernel as the resamples (the tests hold both to
    # featpipe.heads.metrics): a resample that draws the test set's own counts then ties with
    # it exactly, which BCa's z0 counts, where another summation order could differ in the
    # last bit.
    full = atoms.counts[None, :].astype(np.float64)
    return [
        Replicates(float(k.values(full)[0]), np.concatenate(v), k.jackknife(), atoms.counts)
        for v, k in zip(values, kernels, strict=True)
    ]


def draw_counts(atoms: Atoms, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Resamples as counts per atom (float64, so that the kernels' products run in BLAS), a
    chunk of rows at a time.

    Drawing n images with replacement and counting each atom's draws gives a multinomial row
    with the atoms' shares as probabilities. Where atoms are few (classifiers: confusion
    cells) the row is drawn as that multinomial directly, at a cost per atom; otherwise as a
    row of an index matrix whose draws are counted, at a cost per image. Both are the same
    distribution; which is used depends only on the test set, so a seed fixes the result.
    """
    n, a = len(atoms.inverse), len(atoms)
    few = 4 * a <= n  # a multinomial draw costs about five index draws per category
    rows = max(1, CHUNK // (a if few else n))
    for start in range(0, n_resamples, rows):
        r = min(rows, n_resamples - start)
        if few:
            yield rng.multinomial(n, atoms.counts / n, size=r).astype(np.float64)
            continue
        drawn = atoms.inverse[rng.integers(0, n, size=(r, n))]
        drawn += np.arange(r)[:, None] * a  # row i counts into columns [i·a, (i+1)·a)
        yield np.bincount(drawn.ravel(), minlength=r * a).reshape(r, a).astype(np.float64)


def bootstrap(
    predictions: Predictions,
    metric: str,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """The BCa bootstrap interval of ``metric`` over the test images (seeded: the same seed
    gives the same interval)."""
    check_confidence(confidence)
    m = predictions.metric(metric)
    [replicates] = resample([predictions], m, n_resamples, seed)
    if not np.isfinite(replicates.estimate):
        raise ArgumentError("metric", f"{metric} is undefined on this test set (one class?)")
    low, high = replicates.interval(confidence)
    method = f"bootstrap BCa, {n_resamples} resamples, seed {seed}"
    return Interval(replicates.estimate, low, high, len(predictions), method, confidence)


def score(
    predictions: Predictions,
    metric: str,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """A score as featpipe reports it: with its n and its interval.

    Accuracy gets the Wilson interval (exact enough, closed form, no resampling); every other
    metric the BCa bootstrap over test images.
    """
    if predictions.metric(metric).name == "accuracy":
        correct = int(np.count_nonzero(predictions.y == predictions.pred))
        return wilson(correct, len(predictions), confidence)
    return bootstrap(predictions, metric, n_resamples=n_resamples, seed=seed, confidence=confidence)
