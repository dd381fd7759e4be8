"""Stage 3: feature sets read from the cache, the sweep with selection, its result and the fit
run that records it, and the fit stage.

Named for the job, not ``fit``, so that ``featpipe.fit`` stays the function.
"""
