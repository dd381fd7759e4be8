"""The project's metrics, computed for thousands of resamples of a test set at once.

A bootstrap resample of n test images is a row of counts: how often each image was drawn.
Images that agree in everything a metric reads (the true label and every compared model's
prediction, or AUROC's score) are interchangeable, so they are grouped into *atoms* and a
resample is a row of counts per atom. For classifiers the atoms are the cells of the joint
confusion table (at most K² for one model, however many images); for regression and AUROC
nearly every image is its own atom.

Each metric is then evaluated on a whole matrix of count rows with array operations (no Python
loop over resamples), and on the jackknife (each image left out once, which BCa needs) in
closed form. Each kernel computes exactly what ``featpipe.heads.metrics`` reports for the
resampled images; tests hold every kernel to that function on random resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from featpipe.heads.metrics import two_class_margin
from featpipe.stats.predictions import Metric, Predictions
from featpipe.stats.special import sparse


@dataclass(frozen=True)
class Atoms:
    """The distinct images of one test set as seen by one or more models.

    ``columns``: one row per atom, the true label (or value) and then each model's prediction
    (AUROC: its two-class margin); ``counts``: images per atom; ``inverse``: each image's atom.
    """

    columns: np.ndarray
    counts: np.ndarray
    inverse: np.ndarray

    @classmethod
    def of(cls, group: Sequence[Predictions], metric: Metric) -> Atoms:
        """Atoms of models scored on the same images (checked by the caller)."""
        read = [two_class_margin(p.scores) if metric.name == "auroc" else p.pred for p in group]
        table = np.column_stack([group[0].y, *read]).astype(np.float64)
        columns, inverse, counts = np.unique(table, axis=0, return_inverse=True, return_counts=True)
        return cls(columns, counts, inverse.reshape(-1))

    def __len__(self) -> int:
        return len(self.counts)


class Kernel(Protocol):
    def values(self, counts: np.ndarray) -> np.ndarray:
        """The metric for each row of a (resamples × atoms) count matrix."""
        ...

    def jackknife(self) -> np.ndarray:
        """The metric with one image of each atom left out (one value per atom)."""
        ...


def kernel(metric: Metric, atoms: Atoms, model: int, n_classes: int) -> Kernel:
    """The kernel of ``metric`` for the ``model``-th predictions of ``atoms``."""
    y, pred = atoms.columns[:, 0], atoms.columns[:, 1 + model]
    if metric.name == "auroc":
        return Auroc(y, pred, atoms.counts)
    if metric.task == "per_query":  # the mean of the queries' own scores
        per_atom = np.column_stack([np.ones_like(pred), pred])
        return Sums(per_atom, lambda sums: sums[:, 1] / sums[:, 0], atoms.counts)
    if metric.task == "regression":
        return _regression(metric.name, y, pred, atoms.counts)
    return _confusion(
        metric.name, y.astype(np.int64), pred.astype(np.int64), n_classes, atoms.counts
    )


@dataclass(frozen=True)
class Sums:
    """A metric that is a function of per-image sums: ``finish(counts @ per_atom)``.

    Linear sums make the jackknife cheap: leaving one image of atom a out subtracts its row.
    ``per_atom`` may be a scipy sparse array (a confusion kernel's one-hot columns, three per
    class: dense, a 1,000-class test set would need atoms × 3,000 floats).
    """

    per_atom: np.ndarray | sparse.csr_array  # atoms × sums
    finish: Callable[[np.ndarray], np.ndarray]  # rows × sums → one value per row
    counts: np.ndarray

    def values(self, counts: np.ndarray) -> np.ndarray:
        return self.finish(counts @ self.per_atom)

    def jackknife(self) -> np.ndarray:
        full = self.counts.astype(np.float64) @ self.per_atom
        rows = max(1, JACKKNIFE_CHUNK // self.per_atom.shape[1])  # bounded memory
        out = []
        for start in range(0, self.per_atom.shape[0], rows):
            block = self.per_atom[start : start + rows]
            out.append(self.finish(full - (block.toarray() if sparse().issparse(block) else block)))
        return np.concatenate(out)


JACKKNIFE_CHUNK = 1 << 20  # entries of left-one-out sums evaluated at a time


def _confusion(name: str, y: np.ndarray, pred: np.ndarray, k: int, counts: np.ndarray) -> Sums:
    """Accuracy, balanced accuracy and macro-F1 from per-class true positives, true counts
    and predicted counts, as ``metrics.classification`` defines them: balanced accuracy is the
    mean recall over the classes present (in the resample), macro-F1 the mean F1 over all
    ``k`` classes with 0 for a class neither present nor predicted."""
    atom = np.arange(len(y))
    hit = y == pred
    # columns [0, k): true positives; [k, 2k): true counts; [2k, 3k): predicted counts
    rows = np.concatenate([atom[hit], atom, atom])
    cols = np.concatenate([y[hit], k + y, 2 * k + pred])
    per_atom = sparse().csr_array((np.ones(len(rows)), (rows, cols)), shape=(len(y), 3 * k))

    def finish(sums: np.ndarray) -> np.ndarray:
        tp, t, p = sums[:, :k], sums[:, k : 2 * k], sums[:, 2 * k :]
        if name == "accuracy":
            return tp.sum(axis=1) / t.sum(axis=1)
        if name == "balanced_accuracy":
            present = t > 0
            recall = np.divide(tp, t, out=np.zeros_like(tp), where=present)
            return recall.sum(axis=1) / present.sum(axis=1)
        both = t + p
        return np.divide(2 * tp, both, out=np.zeros_like(tp), where=both > 0).mean(axis=1)

    return Sums(per_atom, finish, counts)


def _regression(name: str, y: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> Sums:
    """R², MAE and MSE from sums of the errors and of the targets.

    The targets are centred on their test-set mean first: R²'s total sum of squares is then
    Σ(y−c)² − (Σ(y−c))²/n with c close to the resample's mean, which loses no precision.
    """
    err = pred - y
    centred = y - (counts @ y) / counts.sum()
    per_atom = np.column_stack([np.ones_like(y), err**2, np.abs(err), centred, centred**2])

    def finish(sums: np.ndarray) -> np.ndarray:
        m, sse = sums[:, 0], sums[:, 1]
        if name == "mae":
            return sums[:, 2] / m
        if name == "mse":
            return sse / m
        total = sums[:, 4] - sums[:, 3] ** 2 / m
        # metrics.r2: 0 when the targets do not vary
        return np.where(total > 0, 1 - sse / np.where(total > 0, total, 1), 0.0)

    return Sums(per_atom, finish, counts)


class Auroc:
    """AUROC as the Mann–Whitney statistic: the share of (positive, negative) pairs that the
    margin orders correctly, ties counting one half (what ``roc_auc_score`` computes).

    The negative atoms are sorted by margin once, and each positive atom knows where its margin
    falls among them; a count row then gives the negatives each positive beats from one
    cumulative sum (O(atoms) per resample, no sort). A resample without both classes has no
    AUROC (NaN), as in ``metrics.classification``.
    """

    def __init__(self, y: np.ndarray, margin: np.ndarray, counts: np.ndarray) -> None:
        self.counts = counts
        self.positive = y == 1
        self.pos = np.flatnonzero(self.positive)
        neg = np.flatnonzero(~self.positive)
        self.neg = neg[np.argsort(margin[neg], kind="stable")]
        self.pos_sorted = self.pos[np.argsort(margin[self.pos], kind="stable")]
        # where each positive's margin falls among the sorted negatives (left and right of
        # equal margins), and each negative's among the sorted positives
        neg_margin, pos_margin = margin[self.neg], margin[self.pos_sorted]
        self.among_neg = [np.searchsorted(neg_margin, margin[self.pos], s) for s in SIDES]
        self.among_pos = [np.searchsorted(pos_margin, margin, s) for s in SIDES]

    def values(self, counts: np.ndarray) -> np.ndarray:
        beaten = _half_ties(counts[:, self.neg], self.among_neg)
        pairs = (counts[:, self.pos] * beaten).sum(axis=1)
        total = counts[:, self.pos].sum(axis=1) * counts[:, self.neg].sum(axis=1)
        return np.divide(pairs, total, out=np.full(len(total), np.nan), where=total > 0)

    def jackknife(self) -> np.ndarray:
        c = self.counts[None, :]
        n_pos, n_neg = c[0, self.pos].sum(), c[0, self.neg].sum()
        beaten = _half_ties(c[:, self.neg], self.among_neg)[0]
        pairs = c[0, self.pos] @ beaten
        # one positive out: the negatives it beat go; one negative out: the positives that
        # beat it go (ties half, as in the pairs)
        lost = np.empty(len(self.counts))
        lost[self.pos] = beaten
        beating = n_pos - _half_ties(c[:, self.pos_sorted], self.among_pos)[0]
        lost[~self.positive] = beating[~self.positive]
        total = np.where(self.positive, (n_pos - 1) * n_neg, n_pos * (n_neg - 1)).astype(float)
        return np.divide(pairs - lost, total, out=np.full(len(lost), np.nan), where=total > 0)


SIDES = ("left", "right")


def _half_ties(counts: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
    """Per row, the counted items below each position plus half those tied with it.

    ``counts``: rows × sorted items; ``positions``: the left and right insertion points of
    each query in the sorted items (equal where nothing ties)."""
    below = np.zeros((len(counts), counts.shape[1] + 1))
    np.cumsum(counts, axis=1, out=below[:, 1:])
    left, right = positions
    return (below[:, left] + below[:, right]) / 2
