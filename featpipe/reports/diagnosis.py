"""The course material's fit diagnosis, from measured errors instead of eyeballed curves.

=========  ==========  ========  ===================================================
training   validation  verdict   what to try
=========  ==========  ========  ===================================================
high       high        underfit  more training, a larger model, less regularisation
low        high        overfit   more data, augmentation, regularisation, early stop
low        low         good fit  ready to deploy, if the validation says so clearly
=========  ==========  ========  ===================================================

"High" is relative to chance: a training error above ``UNDERFIT`` of the chance-level error is
high. "Overfit" means the validation error exceeds the training error by more than ``GAP`` and
by more than half of itself, or by ``GAP / 2`` while the validation loss climbs more than
``LOSS_RISE`` above its minimum. Curves are judged at their last epoch: the diagnosis is about
how training went, even when an earlier, better epoch was kept.

A good fit is only called ready to deploy when the evidence can carry it: never while the
validation loss is rising, and never on a validation split too small to tell. For accuracy,
"too small" is a 95% Clopper–Pearson interval whose upper end lies more than ``CI_SLACK``
above the measured error (0 errors in 18 images still allow 18.5%); for R², fewer than
``MIN_REGRESSION_VAL`` images. The text always says how many images the verdict rests on.
"""

from __future__ import annotations

from dataclasses import dataclass

UNDERFIT = 0.25
GAP = 0.05
LOSS_RISE = 0.10
CI_SLACK = 0.05
MIN_REGRESSION_VAL = 50
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
    n_val: int | None = None

    def text(self) -> str:
        return f"{self.verdict}: {self.detail}; try: {self.advice}"


def error_upper_bound(error: float, n: int) -> float:
    """The upper end of the 95% Clopper–Pearson interval of an error rate seen on ``n`` images."""
    from scipy.stats import beta

    errors = round(error * n)
    return 1.0 if errors >= n else float(beta.ppf(0.975, errors + 1, n - errors))


def diagnose(
    train_metric: float,
    val_metric: float,
    chance_error: float,
    val_loss: list[float] | None = None,
    n_val: int | None = None,
    task: str = "classification",
) -> Diagnosis:
    """``*_metric`` are accuracies (or R²); ``chance_error`` is 1 − 1/classes (or 1);
    ``n_val`` is how many images the validation score rests on (None: not recorded)."""
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
    advice = ADVICE[verdict]
    if n_val is None:
        detail += " (validation size not recorded)"
    elif task == "classification" and n_val > 0:
        upper = error_upper_bound(val_error, n_val)
        detail += f" on {n_val} validation images (95% interval up to {upper:.1%})"
    else:
        detail += f" on {n_val} validation images"
    if verdict == "good fit":
        advice = _deploy_advice(val_error, rise, n_val, task)
    return Diagnosis(verdict, train_error, val_error, advice, detail, n_val)


def _deploy_advice(val_error: float, rise: float, n_val: int | None, task: str) -> str:
    """ "Ready to deploy" only where nothing in the evidence argues against it."""
    if rise > LOSS_RISE:
        return (
            "not yet: the validation loss is rising (over-confident predictions); keep the best "
            "epoch (--set patience=N stops early) and check the calibration before deploying"
        )
    if n_val is None:
        return "measure on a validation split of known size before deploying"
    if task == "classification":
        upper = error_upper_bound(val_error, n_val) if n_val else 1.0
        too_small = upper - val_error > CI_SLACK
    else:
        too_small = n_val < MIN_REGRESSION_VAL
    if too_small:
        return (
            f"too few validation images to tell ({n_val}): the true error may be far higher; "
            "label more validation data (or cross-validate) before deploying"
        )
    return ADVICE["good fit"]


def diagnose_history(
    history: dict[str, list[float]],
    n_classes: int,
    epoch: int | None = None,
    n_val: int | None = None,
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
        n_val,
        "classification" if n_classes else "regression",
    )
