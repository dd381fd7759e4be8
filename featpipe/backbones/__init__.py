"""Backbones: the spec type (``MODEL[@WEIGHTS]``), weights sources, model building, pooling."""
