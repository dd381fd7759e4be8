"""The course material's fit diagnosis, from measured errors instead of eyeballed curves.

=========  ==========  ========  ===================================================
training   validation  verdict   what to try
=========  ==========  ========  ===================================================
high       high        underfit  more training, a larger model, less regularisation
low        high        overfit   more data, augmentation, regularisation, early stop
low        low         good fit  ready to deploy
=========  ==========  ========  ===================================================

"High" is relative to chance: a training error above ``UNDERFIT`` of the chance-level error is
high. "Overfit" means the validation error exceeds the training error by more than ``GAP`` and
by more than half of itself, or by ``GAP / 2`` while the validation loss climbs more than
``LOSS_RISE`` above its minimum. Curves are judged at their last epoch: the diagnosis is about
how training went, even when an earlier, better epoch was kept.
"""

from __future__ import annotations

from dataclasses import dataclass

UNDERFIT = 0.25
GAP = 0.05
LOSS_RISE = 0.10
ADVICE = {
    "underfit": "more training, a larger model (an MLP head, a later layer), less regularisation",
    "overfit": "more data, augmentation, stronger regularisation, early stopping",
    "good fit": "ready to deploy",
}


@dataclass
class Diagnosis:
    verdict: str
    train_error: float
    val_error: float
    advice: str
    detail: str

    def text(self) -> str:
        return f"{self.verdict}: {self.detail}; try: {self.advice}"


def diagnose(
    train_metric: float, val_metric: float, chance_error: float, val_loss: list[float] | None = None
) -> Diagnosis:
    """``*_metric`` are accuracies (or R²); ``chance_error`` is 1 − 1/classes (or 1)."""
    train_error, val_error = 1 - train_metric, 1 - val_metric
    gap = val_error - train_error
    detail = f"training error {train_error:.1%}, validation error {val_error:.1%}"
    rise = 0.0
    if val_loss and len(val_loss) > 2:
        best = min(range(len(val_loss)), key=val_loss.__getitem__)
        rise = val_loss[-1] / val_loss[best] - 1 if val_loss[best] > 0 else 0.0
        if best < len(val_loss) - 1 and rise > LOSS_RISE:
            detail += f"; validation loss rose {rise:.0%} after epoch {best + 1}"
    if (gap > GAP and gap > 0.5 * val_error) or (rise > LOSS_RISE and gap > GAP / 2):
        verdict = "overfit"
    elif train_error > UNDERFIT * chance_error:
        verdict = "underfit"
    else:
        verdict = "good fit"
    return Diagnosis(verdict, train_error, val_error, ADVICE[verdict], detail)


def diagnose_history(
    history: dict[str, list[float]], n_classes: int, epoch: int | None = None
) -> Diagnosis | None:
    """Diagnose a torch head from its per-epoch curves (at the last epoch by default)."""
    if not history.get("val_metric"):
        return None
    epoch = len(history["val_metric"]) - 1 if epoch is None else epoch
    chance = 1 - 1 / n_classes if n_classes else 1.0
    return diagnose(
        history["train_metric"][epoch],
        history["val_metric"][epoch],
        chance,
        history.get("val_loss"),
    )
