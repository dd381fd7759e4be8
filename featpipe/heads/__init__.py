"""Heads on cached features: the head config type, fitted heads, the stacked trainer,
preprocessing and metrics.
"""
