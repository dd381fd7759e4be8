"""The refit: once val has chosen, train the same run again on train + val.

Choosing the epoch, the weights (raw or their EMA) and the test-time augmentation needs images
the network does not train on; the network that is kept needs none of them. So, as ``fit``
refits its chosen head on train + val (scikit-learn's ``refit=True``), ``finetune --refit``
trains the same options from the start on train + val, for as many epochs of the same schedule
as val chose (the learning rate at each epoch as in the choosing run, only more images per
epoch), keeps the last epoch's raw or EMA weights as val chose, and scores test with them. On
ELPV the val split is 295 of 1,968 labelled cells: 18% more training images.

Nothing is chosen in the refit (it has no val), so it keeps the epoch's weights as they are;
its head starts from the ``--from`` run's own head, which that fit refitted on train + val where
it was asked to, so both stages of the refit saw the same images. It trains in ``refit/`` of the
run directory with its own checkpoint, so a kill during the refit resumes there (the choosing
run's files stay until the run is written).
"""

from __future__ import annotations

from dataclasses import replace

from featpipe.finetuning.plan import Plan
from featpipe.finetuning.trainer import EpochProgress, Trainer

REFIT_DIR = "refit"


def refit_plan(plan: Plan, epochs: int) -> Plan:
    """The plan of the refit of ``plan``: train + val as training images, no val, ``epochs``
    epochs of the same schedule, from the start run's own head, in ``refit/``."""
    start = plan.start
    return replace(
        plan,
        train=plan.train + plan.val,
        val=[],
        out=plan.out / REFIT_DIR,
        start=None if start is None else replace(start, head=start.refit_head),
        epochs=epochs,
    )


def refit(chosen: Trainer, progress: EpochProgress | None = None) -> Trainer:
    """Train ``chosen``'s run again on train + val for the epochs val chose (none when it kept
    the start head); returns the trainer whose model holds the kept weights (raw or EMA)."""
    state = chosen.state
    again = Trainer(refit_plan(chosen.plan, state.best_epoch + 1))
    again.run(progress=progress)
    if state.best_weights == "ema":
        assert again.ema is not None  # the same config: the EMA is kept in the refit too
        again.model.load_state_dict(again.ema.module.state_dict())
    return again
