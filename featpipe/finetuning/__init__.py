"""Stage 4: unfreeze blocks of the backbone and train it with a head (``featpipe finetune``),
plus ``inspect``. Named for the job, so that ``featpipe.finetune`` stays the function.
"""
