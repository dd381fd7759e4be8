"""The run record: one atomic writer and one reader for every kind of run
(fit, fine-tune, compare).
"""
