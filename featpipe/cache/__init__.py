"""The HDF5 feature cache: key, crash-safe shards, entries and the cache directory.

HDF5's own file locks are switched off (unless the user set ``HDF5_USE_FILE_LOCKING``): every
cache file is written whole in memory and appears by an atomic rename, so it is never open for
writing by HDF5, and featpipe's own ``flock``s coordinate writers. HDF5's read lock would instead
collide with the writer's ``flock``, which stays on the file for the instant after its rename
(a concurrent extract then failed to open a complete entry: "unable to lock file").
"""

import os

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

# The imports below open nothing; the setting above must precede the first file open.

from featpipe.cache.catalog import DEFAULT_CACHE_DIR, entry_info, find_entries, list_entries
from featpipe.cache.entry import Features, iter_chunks, load_features, verify

__all__ = [
    "DEFAULT_CACHE_DIR",
    "Features",
    "entry_info",
    "find_entries",
    "iter_chunks",
    "list_entries",
    "load_features",
    "verify",
]
