"""The HDF5 feature cache: key, crash-safe shards, entries and the cache directory."""

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
