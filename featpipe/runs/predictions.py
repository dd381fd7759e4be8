"""A run's per-image predictions (``predictions.npz``): what paired comparisons read.

An interval needs the n a score rests on; a paired test (McNemar, the paired bootstrap) needs
more: every image's prediction, so that two runs scored on the same images can be compared
image by image long after they ran (``featpipe compare`` reads them back from the runs). A fit
run keeps, per split it scored, each image's path (the pairing key: two runs are paired only
when their paths agree, in order), its true label or value and the head's raw outputs (the
argmax is the prediction; a two-class head's outputs are also what AUROC ranks by). After a
refit on train + val it also keeps selection's train-only head on test (:data:`SELECTION_TEST`):
the head a fine-tune starts from, which the fine-tune is compared with image by image. A
fine-tune run keeps its kept weights' outputs on its val and test splits the same way.

NumPy's ``.npz`` read with ``allow_pickle=False``: arrays only, never code; the outputs keep
the head's dtype (float32 for torch heads), a few bytes per image and class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featpipe.errors import DataError
from featpipe.stats import Predictions

FILE = "predictions.npz"
# after a refit: selection's train-only head (the run's selection-head/) on the test split
SELECTION_TEST = "selection-test"


@dataclass(frozen=True)
class SplitOutputs:
    """One split's images, in row order: paths, true labels (or values), raw head outputs."""

    relpath: np.ndarray
    y: np.ndarray
    outputs: np.ndarray

    def predictions(self, task: str, n_classes: int) -> Predictions:
        return Predictions.from_outputs(task, n_classes, self.y, self.outputs)

    def aligned(self, relpath: np.ndarray) -> SplitOutputs | None:
        """These outputs in the order of ``relpath`` (another run's images), or None unless
        both hold exactly the same images: a run that read its images in another order (a
        fine-tune's loader, a fit's cache) is still paired with it image by image."""
        relpath = np.asarray(relpath).astype(str)
        mine = np.asarray(self.relpath).astype(str)
        same = len(relpath) == len(mine) and np.array_equal(np.sort(relpath), np.sort(mine))
        if not same or len(np.unique(mine)) != len(mine):
            return None
        # the row of ours holding relpath[i]: the same rank among our sorted paths
        rows = np.argsort(mine, kind="stable")[np.argsort(np.argsort(relpath, kind="stable"))]
        return SplitOutputs(mine[rows], np.asarray(self.y)[rows], np.asarray(self.outputs)[rows])


@dataclass(frozen=True)
class RunPredictions:
    """The predictions a run recorded: per split (``val``, ``test``) its :class:`SplitOutputs`.

    ``val`` holds selection's head (trained on train alone) on the images selection scored it
    on: the val split, or every train image out of fold after cross-validation; ``test`` the
    run's head on the test split; :data:`SELECTION_TEST` (after a refit) selection's head on the
    test split. A fine-tune's ``val`` and ``test`` hold its kept weights on its val and test."""

    task: str
    n_classes: int
    splits: Mapping[str, SplitOutputs]

    def on(self, split: str) -> Predictions | None:
        """The split's :class:`featpipe.stats.Predictions` (None: not recorded)."""
        part = self.splits.get(split)
        return None if part is None else part.predictions(self.task, self.n_classes)

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "task": np.array(self.task),
            "n_classes": np.array(self.n_classes),
        }
        for split, part in self.splits.items():
            arrays[f"{split}/relpath"] = np.asarray(part.relpath).astype(str)
            arrays[f"{split}/y"] = np.asarray(part.y)
            arrays[f"{split}/outputs"] = np.asarray(part.outputs)
        with Path(path).open("wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> RunPredictions:
        """Read ``predictions.npz``; a damaged file raises :class:`DataError` naming it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            names = sorted({k.split("/")[0] for k in arrays if "/" in k})
            splits = {
                s: SplitOutputs(arrays[f"{s}/relpath"], arrays[f"{s}/y"], arrays[f"{s}/outputs"])
                for s in names
            }
            return cls(str(arrays["task"]), int(arrays["n_classes"]), splits)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path} is damaged ({exc}): fit the run again") from None


def paired(first: SplitOutputs, other: SplitOutputs) -> bool:
    """Whether two runs scored the same images in the same order (their pairing holds)."""
    return len(first.relpath) == len(other.relpath) and bool(
        np.array_equal(first.relpath, other.relpath)
    )
