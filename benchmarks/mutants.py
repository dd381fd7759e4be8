"""Mutation check of the test suite: plant known bugs in a copy of the tree, show the suite fails.

A test suite that stays green when the normaliser forgets the mean, or when an exported head
loses its standardisation, proves less than it claims. Each mutant below is one such bug, written
as an exact text replacement in one file; the script copies the working tree to a temporary
folder, applies one mutant, runs pytest there (on the tests named for the mutant, or on the whole
suite with ``--full``) and reports whether the suite caught it ("killed") or not ("survived").

    python benchmarks/mutants.py              # every mutant, its own tests
    python benchmarks/mutants.py --full       # every mutant, the whole suite each time (slow)
    python benchmarks/mutants.py normalize    # one mutant

A mutant whose text is no longer in the code is reported as "stale" and makes the script fail:
the list must follow the code, or it checks nothing. Not part of ``make test``: it runs the
suite once per mutant. ``make mutants`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant(
        "normalize",
        "the device-side normaliser no longer subtracts the mean",
        "featpipe/data/transforms.py",
        'self.register_buffer("shift", -torch.tensor(mean).view(1, -1, 1, 1) / std_t)',
        'self.register_buffer("shift", 0 * torch.tensor(mean).view(1, -1, 1, 1) / std_t)',
        ("tests/backbones",),
    ),
    Mutant(
        "pool-max-is-avg",
        "pool=max computes the average",
        "featpipe/backbones/pooling.py",
        "pooled.append(x.amax(dim=(2, 3), keepdim=True))",
        "pooled.append(x.mean(dim=(2, 3), keepdim=True))",
        ("tests/backbones/test_backbones.py",),
    ),
    Mutant(
        "key-drops-pool",
        "the cache key forgets the pooling",
        "featpipe/cache/key.py",
        "return json.dumps(asdict(self), sort_keys=True",
        'return json.dumps({k: v for k, v in asdict(self).items() if k != "pool"}, sort_keys=True',
        ("tests/cache",),
    ),
    Mutant(
        "export-raw-head",
        "predict's and export's pipeline uses the raw head module, without its preprocessing",
        "featpipe/use/predict.py",
        "self.head = pipeline.head.to_module()",
        "self.head = pipeline.head.module",
        ("tests/use/test_predict_export.py",),
    ),
    Mutant(
        "optimizer-state-dropped",
        "a stage change of gradual unfreezing restarts the moments of parameters already training",
        "featpipe/finetuning/model.py",
        "optimizer.state[param] = previous.state[param]",
        "pass",
        ("tests/finetuning/test_stage.py",),
    ),
    Mutant(
        "lp-ft-start-ignored",
        "LP-FT starts from a fresh head instead of the fitted run's head",
        "featpipe/finetuning/model.py",
        "head = start.head.to_module().train()",
        "head = fresh_head(backbone.num_features, plan.n_outputs, config.head, "
        "config.head_init, config.head_scale)",
        ("tests/finetuning/test_finetune.py",),
    ),
    Mutant(
        "bn-beta-trains",
        "--bn freeze-affine/freeze-stats freeze γ but let β train",
        "featpipe/finetuning/model.py",
        "                for param in module.parameters(recurse=False):\n"
        "                    param.requires_grad_(False)",
        "                module.weight.requires_grad_(False)",
        ("tests/finetuning/test_finetune.py",),
    ),
    Mutant(
        "lp-ft-starts-from-the-refit",
        "LP-FT starts from the head refitted on train + val, which has seen its val images",
        "featpipe/finetuning/plan.py",
        "run.selection_head(),",
        "run.head(),",
        ("tests/finetuning/test_finetune.py",),
    ),
    Mutant(
        "exif-turns-the-wrong-way",
        "EXIF orientation 6 is turned counter-clockwise",
        "featpipe/data/images.py",
        "img = ImageOps.exif_transpose(img)",
        "img = img.transpose(Image.Transpose.ROTATE_90) "
        "if img.getexif().get(0x0112) == 6 else ImageOps.exif_transpose(img)",
        ("tests/data/test_images.py",),
    ),
)


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored), without .git."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = Path(raw.decode())
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # The package maps featpipe.cli to the top-level cli/ folder; mirror that in the copy.
    (dest / "featpipe" / "cli").symlink_to(dest / "cli", target_is_directory=True)


def run_mutant(mutant: Mutant, full: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        target = tree / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            return {"mutant": mutant.name, "result": "stale", "seconds": 0.0}
        target.write_text(text.replace(mutant.old, mutant.new))
        # PYTHONPATH puts the mutated copy before the editable install, for pytest and for
        # every subprocess a test starts (the console script, torchrun ranks).
        env = os.environ | {"PYTHONPATH": str(tree)}
        tests = ["tests"] if full else list(mutant.tests)
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
        return {
            "mutant": mutant.name,
            "why": mutant.why,
            "result": "killed"
            if proc.returncode == 1
            else f"survived (pytest rc {proc.returncode})",
            "caught_by": failed[:3],
            "tests": tests,
            "seconds": round(seconds, 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--full", action="store_true", help="run the whole suite per mutant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    results = []
    for mutant in chosen:
        result = run_mutant(mutant, args.full)
        results.append(result)
        print(f"{mutant.name:24} {result['result']:10} {result['seconds']:7.1f} s  {mutant.why}")
        for line in result.get("caught_by", []):
            print(f"{'':24} {line}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    bad = [r for r in results if r["result"] != "killed"]
    print(f"{len(results) - len(bad)} of {len(results)} mutants killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
