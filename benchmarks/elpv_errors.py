"""Where the ELPV benchmark's runs go wrong, from the runs ``bench_finetune_elpv.py`` kept.

For each ``--rows`` row, seed by seed, on the 656 test cells:

* the errors at each of ELPV's four defect probabilities (0, 1/3, 2/3, 1: the annotators'
  confidence; the binary label is defective from 0.5), read from the prepared tree's
  ``defect_probability.csv``: which cells the accuracy is lost on;
* with ``--against ROW``, McNemar's exact test against that row's run of the same seed (the
  images only one of them gets right, and the two-sided p). ``--against RESULTS.json:ROW``
  pairs with the predictions a results file recorded for that row instead (each seed's
  ``test_predicted``), on any machine that writes the same split, once the runs are gone;
* the accuracy of the seeds' mean softmax (an ensemble of the row's runs);
* over every run read (all rows and seeds): the cells that all of them miss, by defect
  probability, and the accuracy a run would have that missed only those. That bounds what
  re-seeding or choosing among these variants can gain: a miss shared by every run is not
  noise.

Usage: ``python benchmarks/elpv_errors.py --work /var/tmp/ft-elpv --rows 4 --against 1``.
Nothing is trained or extracted: it reads ``predictions.npz`` of finished runs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from featpipe.protocols.calibration import softmax
from featpipe.runs.predictions import RunPredictions, SplitOutputs
from featpipe.runs.record import load_run
from featpipe.stats.paired import format_p, mcnemar
from featpipe.stats.predictions import Predictions


def kept_predictions(work: Path, row: str, seed: int) -> RunPredictions:
    """The predictions of ``row``'s run for ``seed``, found through the summary the bench kept
    beside it (``bench.json`` names the run)."""
    record = work / "runs" / row / f"seed{seed}" / "bench.json"
    if not record.exists():
        raise SystemExit(f"{record}: no finished run; run the bench for row {row} first")
    return load_run(Path(json.loads(record.read_text())["run"])).predictions()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="bench_finetune_elpv's --work")
    parser.add_argument("--rows", default="4", help="comma-separated row ids")
    parser.add_argument(
        "--against", help="a row to pair each seed with (McNemar), or RESULTS.json:ROW"
    )
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with (args.work / "elpv" / "defect_probability.csv").open() as handle:
        probability = {r["path"]: float(r["label"]) for r in csv.DictReader(handle)}
    recorded = recorded_predictions(args.work, args.against) if args.against else None
    every: list[SplitOutputs] = []  # each run of each row
    for row in args.rows.split(","):
        tests: list[SplitOutputs] = []
        for seed in range(args.seeds):
            kept = kept_predictions(args.work, row, seed)
            test: SplitOutputs = kept.splits["test"]
            right = test.outputs.argmax(1) == test.y
            level = np.round([probability[p] for p in test.relpath], 2)
            errors = by_level(~right, level)
            line = f"row {row} seed {seed}: accuracy {right.mean():.4f}; errors {errors}"
            if args.against:
                mine = test.predictions(kept.task, kept.n_classes)
                theirs = Predictions.classification(
                    test.y, against(args.work, args.against, recorded, seed, test), kept.n_classes
                )
                paired = mcnemar(mine, theirs)
                line += (
                    f"; vs row {args.against}: {paired.only_a} / {paired.only_b}, "
                    f"{format_p(paired.p)}"
                )
            print(line)
            tests.append(test)
        first = tests[0]  # the seeds' runs, image by image in the first one's order
        mean = np.mean([softmax(t.aligned(first.relpath).outputs) for t in tests], axis=0)
        ensemble = np.mean(mean.argmax(1) == first.y)
        print(f"row {row}: the {len(tests)} seeds' mean softmax scores {ensemble:.4f}")
        every += tests
    print(shared_misses(every, probability))


def recorded_predictions(work: Path, spec: str) -> list[str] | None:
    """Each seed's ``test_predicted`` for ``spec`` = ``RESULTS.json:ROW`` (read and checked
    against ``work``'s split once), or None when ``spec`` is a row of ``work``."""
    results, _, row = spec.rpartition(":")
    if not results:
        return None
    recorded = json.loads(Path(results).read_text())
    manifest = work / "elpv" / "paper-split.csv"
    if recorded["split"]["sha256"] != hashlib.sha256(manifest.read_bytes()).hexdigest():
        raise SystemExit(f"{results}: recorded on another split than {manifest}")
    seeds = {r["id"]: r["seeds"] for r in recorded["rows"]}.get(row)
    if seeds is None:
        raise SystemExit(f"{results}: no row {row} recorded")
    if any("test_predicted" not in seed for seed in seeds):
        raise SystemExit(f"{results}: row {row} was recorded before its predictions were")
    return [seed["test_predicted"] for seed in seeds]


def against(
    work: Path, spec: str, recorded: list[str] | None, seed: int, test: SplitOutputs
) -> np.ndarray:
    """The predicted classes of ``spec`` for ``seed``, aligned to ``test``'s cells: from its
    run in ``work``, or from the ``recorded`` digits (one a cell, the cells in path order)."""
    if recorded is None:
        other = kept_predictions(work, spec, seed).splits["test"].aligned(test.relpath)
        return other.outputs.argmax(1)
    if seed >= len(recorded):
        raise SystemExit(f"{spec}: no seed {seed} recorded")
    cells = np.asarray(test.relpath).astype(str)
    by_cell = dict(zip(sorted(cells), recorded[seed], strict=True))
    return np.array([int(by_cell[p]) for p in cells])


def by_level(wrong: np.ndarray, level: np.ndarray) -> str:
    """``wrong`` counted at each defect probability: ``p=0.67: 24/26`` (of the cells there)."""
    return ", ".join(
        f"p={v:.2f}: {int(np.sum(wrong[level == v]))}/{int(np.sum(level == v))}"
        for v in np.unique(level)
    )


def shared_misses(runs: list[SplitOutputs], probability: dict[str, float]) -> str:
    """The test cells every one of ``runs`` gets wrong, by defect probability, and the
    accuracy of a run that missed only those."""
    first = runs[0]
    aligned = [run.aligned(first.relpath) for run in runs]
    if any(run is None for run in aligned):
        raise SystemExit("the runs were tested on different cells: compare rows of one split")
    wrong = np.all([run.outputs.argmax(1) != run.y for run in aligned], axis=0)
    level = np.round([probability[p] for p in first.relpath], 2)
    return (
        f"all {len(runs)} runs miss {int(wrong.sum())} of {len(wrong)} cells "
        f"({by_level(wrong, level)}); missing only those scores {1 - wrong.mean():.4f}"
    )


if __name__ == "__main__":
    main()
