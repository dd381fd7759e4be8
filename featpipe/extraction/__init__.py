"""Stage 2: run a frozen backbone once over a dataset and write its embeddings to the cache.

The package is named for the job, not ``extract``, so that ``featpipe.extract`` stays the function.
"""
