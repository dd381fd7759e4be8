"""The exceptions that users see, each a subclass of the builtin that fits.

Every problem caused by input (a bad argument, a broken file, a full disk) is raised as a
:class:`FeatpipeError` with a one-line message that says what to do. Python callers catch the
builtin they already know (``ValueError`` for a bad argument or bad data, ``OSError`` /
``FileNotFoundError`` for paths and disks); the CLI catches :class:`FeatpipeError`, prints the one
line and exits with status 2. Anything else is a bug and keeps its traceback.

An error about one argument names it by its Python parameter (``pool``), so the message reads
right from Python; the CLI renders the same error with its own flag (``--pool``) through
:meth:`FeatpipeError.render`.
"""

from __future__ import annotations

from collections.abc import Callable


class FeatpipeError(Exception):
    """A user-facing error with a one-line, actionable message.

    ``param`` names the parameter the error is about, if any; ``str()`` then starts with it.
    The base class stays catchable on its own for code that handles every featpipe error.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.message = " ".join(message.split())
        self.param = param
        super().__init__(self.render())

    def render(self, flag: Callable[[str], str] | None = None) -> str:
        """The one line, with the parameter spelled by ``flag`` (the CLI passes its flag names)."""
        if self.param is None:
            return self.message
        return f"{flag(self.param) if flag else self.param} {self.message}"

    def __str__(self) -> str:
        return self.render()


class ArgumentError(FeatpipeError, ValueError):
    """A bad value of one argument; ``param`` is its Python name.

    The message continues the parameter's name: ``ArgumentError("pool", "maxx: choose one of
    avg, max")`` reads ``pool maxx: …`` from Python and ``--pool maxx: …`` on the command line.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, param=param)


class DataError(FeatpipeError, ValueError):
    """Bad input data: a dataset, manifest, weights file or run that cannot be used as it is."""


class StorageError(FeatpipeError, OSError):
    """A path, a disk or the cache: not writable, full, corrupt, or from another version."""


class MissingError(StorageError, FileNotFoundError):
    """A file or folder that the caller named does not exist."""
