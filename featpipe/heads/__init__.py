"""Heads on cached features.

``config`` the one head-config type (parsed once, recorded one way); ``estimator`` ``Head``,
the scikit-learn estimator; ``train_data`` what a grid of heads is fitted on, as one value;
``fitted`` fitted heads and saving without pickle; ``stacked`` the stacked torch trainer,
``rows`` the row sources it draws from and ``placement`` the device they train on; ``views``
training on augmented views; ``mlp`` the one torch head builder and ``schedules`` the one
learning-rate schedule module (both shared with fine-tuning); ``paths`` regularisation paths;
``preprocess`` train-only feature preprocessing; ``metrics`` the scores a run reports.
"""
