"""Bulk work with CPython's cyclic garbage collector paused.

Scanning 200,000 files, reading an index of 200,000 stored rows or writing an entry makes
hundreds of thousands of small tuples, dicts and strings, none of them in a reference cycle.
Every allocation still counts toward the collector's thresholds, and each full collection walks
every object the process holds: with torch loaded (millions of objects) collections were half
of reading such an index (2.0-2.4 s with the collector, 1.0-1.2 s without, on a loaded 2-core
machine). The functions marked ``@paused()`` build only acyclic data, so pausing loses nothing:
what they leave behind is collected once the collector runs again.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """Pause the collector for a block (or, as ``@paused()``, a call), then restore it as it
    was: nested and recursive uses are safe, each call has its own state."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
