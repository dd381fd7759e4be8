"""What a long call tells its caller while it works: batches done, and the steps before them.

The stages (extract, fit, advise) and the CLI's display share these types, so they live below
every stage: a stage reports, a display (:mod:`featpipe.cli.render`) shows, and neither imports
the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Progress:
    """What a progress display needs after each batch."""

    done: int
    total: int
    skipped: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Phase:
    """A step before the first batch, for a status display: building a model or probing its
    speed can take minutes on a loaded machine, and silence reads as a hang.

    ``name`` is one of ``scanning``, ``cache`` (looking up and reading the cache), ``building``,
    ``probing``, ``copying`` (rows of the same files from another dataset's entry),
    ``waiting`` (for a concurrent extract computing some of the rows) and ``warning`` (a
    one-line warning worth showing before the run goes on); the stages above extraction add
    their own (``fitting``, ``measuring``, ``refitting``).
    """

    name: str
    message: str

    def __str__(self) -> str:
        return self.message


def quiet(phase: Phase) -> None:
    """The status callback of a caller that shows none."""
