"""Where the ELPV benchmark's runs go wrong, from the runs ``bench_finetune_elpv.py`` kept.

For each ``--rows`` row, seed by seed, on the 656 test cells:

* the errors at each of ELPV's four defect probabilities (0, 1/3, 2/3, 1: the annotators'
  confidence; the binary label is defective from 0.5), read from the prepared tree's
  ``defect_probability.csv``: which cells the accuracy is lost on;
* with ``--against ROW``, McNemar's exact test against that row's run of the same seed (the
  images only one of them gets right, and the two-sided p);
* the accuracy of the seeds' mean softmax (an ensemble of the row's runs).

Usage: ``python benchmarks/elpv_errors.py --work /var/tmp/ft-elpv --rows 4 --against 1``.
Nothing is trained or extracted: it reads ``predictions.npz`` of finished runs.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from featpipe.runs.predictions import SplitOutputs
from featpipe.runs.record import load_run


def test_outputs(work: Path, row: str, seed: int) -> SplitOutputs:
    """The test outputs of ``row``'s run for ``seed`` (a fine-tune's ``run``, or the head
    fit's one run folder)."""
    folder = work / "runs" / row / f"seed{seed}"
    runs = [folder / "run"] if (folder / "run").is_dir() else sorted(folder.glob("runs/*/*/*"))
    if len(runs) != 1:
        raise SystemExit(f"{folder}: expected one finished run, found {len(runs)}")
    return load_run(runs[0]).predictions().splits["test"]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def mcnemar(right: np.ndarray, other: np.ndarray) -> str:
    only, only_other = int(np.sum(right & ~other)), int(np.sum(~right & other))
    if only + only_other == 0:
        return "0 / 0"
    return f"{only} / {only_other}, p = {binomtest(only, only + only_other).pvalue:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="bench_finetune_elpv's --work")
    parser.add_argument("--rows", default="4", help="comma-separated row ids")
    parser.add_argument("--against", help="a row to pair each seed with (McNemar)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with (args.work / "elpv" / "defect_probability.csv").open() as handle:
        probability = {r["path"]: float(r["label"]) for r in csv.DictReader(handle)}
    for row in args.rows.split(","):
        probs = []
        for seed in range(args.seeds):
            test = test_outputs(args.work, row, seed)
            right = test.outputs.argmax(1) == test.y
            level = np.round([probability[p] for p in test.relpath], 2)
            errors = ", ".join(
                f"p={v:.2f}: {int(np.sum(~right[level == v]))}/{int(np.sum(level == v))}"
                for v in np.unique(level)
            )
            line = f"row {row} seed {seed}: accuracy {right.mean():.4f}; errors {errors}"
            if args.against:
                other = test_outputs(args.work, args.against, seed).aligned(test.relpath)
                line += (
                    f"; vs row {args.against}: {mcnemar(right, other.outputs.argmax(1) == other.y)}"
                )
            print(line)
            probs.append((test.relpath, softmax(test.outputs), test.y))
        paths, _, y = probs[0]
        if all(np.array_equal(p, paths) for p, _, _ in probs):
            mean = np.mean([p for _, p, _ in probs], axis=0)
            ensemble = np.mean(mean.argmax(1) == y)
            print(f"row {row}: the {len(probs)} seeds' mean softmax scores {ensemble:.4f}")


if __name__ == "__main__":
    main()
