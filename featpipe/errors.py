"""The one exception type that users see.

Every problem caused by input (a bad option, a broken file, a full disk) is raised as
:class:`FeatpipeError` with a one-line message that names the file or option and says what to
do. The CLI prints exactly that line and exits with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class FeatpipeError(Exception):
    """A user-facing error with a one-line, actionable message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
