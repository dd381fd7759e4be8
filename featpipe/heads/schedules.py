"""Learning-rate schedules: one rule per name, shared by stacked heads and fine-tuning.

The schedule gives the factor on each parameter group's base learning rate at optimizer step
``step`` (counted from 0) of ``total`` steps, after an optional linear warm-up of ``warmup``
steps. With ``p = (step − warmup) / (total − warmup)``, the share of post-warm-up training
done so far:

* ``cosine``: ``½·(1 + cos(π·p))``, from 1 down towards 0, updated every step;
* ``step``: ×0.1 at one third and again at two thirds of the post-warm-up steps (1, 0.1, 0.01);
* ``none``: 1 throughout.

During warm-up the factor rises linearly: ``(step + 1) / warmup``, reaching 1 at its last
step. Heads and fine-tunes once had a ``step`` schedule each (every ``epochs // 3`` epochs, and
thirds of all steps); they are now the one rule above.
"""

from __future__ import annotations

import math

from featpipe.errors import ArgumentError

SCHEDULES = ("cosine", "step", "none")

# A head left at ``epochs=0`` trains for at least MIN_STEPS optimiser steps and DEFAULT_EPOCHS
# epochs. Counting steps, not epochs, is what makes one default train small and large data
# alike: 100 rows at batch 128 are one step an epoch, so 20 epochs are 20 steps and a linear
# head at lr 0.1 is still far from converged (13-43 points below LogisticRegression at 100 rows,
# tests/heads/test_defaults.py), while 10,000 rows make 78 steps an epoch and 20 epochs suffice.
MIN_STEPS = 300
DEFAULT_EPOCHS = 20


def epochs_for(epochs: int, steps_per_epoch: int) -> int:
    """The epochs a head trains: ``epochs``, or with 0 enough for :data:`MIN_STEPS` steps and
    at least :data:`DEFAULT_EPOCHS`."""
    return epochs or max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / max(1, steps_per_epoch)))


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """The factor on the base learning rate at ``step`` of ``total`` (see the module text)."""
    if schedule not in SCHEDULES:
        raise ArgumentError("schedule", f"{schedule}: choose one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return (step + 1) / warmup
    after = step - warmup
    span = max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * after / span))
    if schedule == "step":
        return 0.1 ** min(2, (3 * after) // span)  # integer thirds: no float rounding at a cut
    return 1.0
