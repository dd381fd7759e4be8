"""The files a fine-tune run keeps while it trains: the resume checkpoint and the best weights.

Both are written under a temporary name and renamed, so a kill at any moment leaves either the
previous file or the new one, never half of one. The checkpoint is loaded with torch's
``weights_only`` unpickler, which builds tensors and plain containers only: a crafted
``checkpoint.pt`` in an output directory cannot run code (the unrestricted unpickler would run
whatever the file names, before any check of its contents could refuse it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from featpipe.errors import StorageError

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"


class Checkpointer:
    """Reads and writes the checkpoint and best weights of the run in ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out

    @property
    def path(self) -> Path:
        return self.out / CHECKPOINT

    def _replace(self, name: str, write: Any) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f"{name}.tmp-{os.getpid()}"
        write(tmp)
        os.replace(tmp, self.out / name)

    def save(self, snapshot: dict[str, Any]) -> None:
        """Write ``snapshot`` (tensors, numbers, strings, lists, dicts) as the checkpoint."""
        self._replace(CHECKPOINT, lambda tmp: torch.save(snapshot, tmp))

    def load(self, device: torch.device) -> dict[str, Any] | None:
        """The checkpoint, or None if there is none; never runs code from the file."""
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location=device, weights_only=True)
        except Exception as exc:
            # A refused pickle, a truncated or foreign file: torch raises many types (its text is
            # many lines and suggests the unsafe loader). weights_only ran nothing from the file;
            # one line instead.
            raise StorageError(
                f"{self.path} is not a fine-tune checkpoint featpipe can read safely "
                f"({type(exc).__name__}); it was not loaded: delete it to start this run again, "
                "or write to a new output directory"
            ) from None

    def save_best(self, state: dict[str, torch.Tensor]) -> None:
        self._replace(
            BEST, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        )

    def load_best(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.out / BEST))
