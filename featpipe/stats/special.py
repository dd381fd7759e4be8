"""The scipy functions :mod:`featpipe.stats` uses, with scipy imported at the first call.

Every ``featpipe`` command imports the statistics (its leaderboards print intervals), and
``scipy.special`` with ``scipy.sparse`` cost about 0.3 s of each start: a third of a cache
hit's process at 200,000 files (issue 28's goal is 3 s). A command that prints no interval
never imports scipy; the first one that does pays the import once.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def _special() -> ModuleType:
    import scipy.special

    return scipy.special


def ndtr(x: Any) -> Any:
    """The standard normal CDF."""
    return _special().ndtr(x)


def ndtri(p: Any) -> Any:
    """The standard normal quantile."""
    return _special().ndtri(p)


def bdtr(k: Any, n: Any, p: Any) -> Any:
    """The binomial CDF: P(X <= k) for X ~ Binomial(n, p)."""
    return _special().bdtr(k, n, p)


def stdtr(df: Any, t: Any) -> Any:
    """Student's t CDF."""
    return _special().stdtr(df, t)


def stdtrit(df: Any, p: Any) -> Any:
    """Student's t quantile."""
    return _special().stdtrit(df, p)


def sparse() -> ModuleType:
    """``scipy.sparse``."""
    import scipy.sparse

    return scipy.sparse
