"""Heads on cached features.

``config`` the one head-config type (parsed once, recorded one way); ``estimator`` ``Head``,
the scikit-learn estimator; ``fitted`` fitted heads and saving without pickle; ``stacked`` the
stacked torch trainer; ``mlp`` the one torch head builder and ``schedules`` the one
learning-rate schedule module (both shared with fine-tuning); ``paths`` regularisation paths;
``preprocess`` train-only feature preprocessing; ``metrics`` the scores a run reports.
"""
