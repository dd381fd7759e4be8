"""The run record: one atomic writer and one reader for every kind of run
(fit, fine-tune, compare), and the one type of what a run measured (``metrics``).
"""
