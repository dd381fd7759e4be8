"""Many processes, GPUs or nodes through ``torchrun`` and torch.distributed — no own scheduler.

Under ``torchrun`` (``WORLD_SIZE`` > 1) featpipe joins the process group (NCCL on CUDA, gloo on
CPU) with a timeout on every collective, and:

* checks at start-up that every rank got the same arguments, and that every rank sees the same
  cache directory (a file written by rank 0 must be readable by all);
* extraction: rank 0 resolves the key and recovers journals of killed runs; the missing rows
  are cut into contiguous, disjoint parts in dataset order, one per rank; each rank writes its
  own shards; rank 0 commits the entry (a virtual dataset over everyone's shards);
* sweeps: groups of head configs are dealt out to ranks; results are gathered so that every
  rank holds the whole grid and rank 0 writes the run;
* failure: each phase ends with an exchange of statuses, so an exception on one rank becomes
  the same clear error on every rank instead of a hang; a rank that dies makes the others'
  collectives fail (or time out) and they stop with an error that says so.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from featpipe.errors import FeatpipeError

DEFAULT_TIMEOUT_S = int(os.environ.get("FEATPIPE_DIST_TIMEOUT", "1800"))


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def leader(self) -> bool:
        return self.rank == 0


_CURRENT: Dist | None = None


def requested() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Dist | None:
    """The process group this process belongs to (joined on first use), or None if alone."""
    global _CURRENT
    if _CURRENT is not None or not requested():
        return _CURRENT
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=DEFAULT_TIMEOUT_S))
        except Exception as exc:
            raise FeatpipeError(
                f"cannot join the torchrun process group ({exc}): check MASTER_ADDR and "
                "MASTER_PORT, and that every node can reach the master"
            ) from None
    _CURRENT = Dist(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    return _CURRENT


def _collective(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except FeatpipeError:
        raise
    except Exception as exc:  # a peer died or timed out: every survivor lands here
        raise FeatpipeError(
            f"rank {_CURRENT.rank if _CURRENT else '?'}: another rank died or stopped answering "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); rerun the same command "
            "to resume: finished rows are kept"
        ) from None


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist

    assert _CURRENT is not None
    out: list[Any] = [None] * _CURRENT.world
    _collective(dist.all_gather_object, out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj]
    _collective(dist.broadcast_object_list, box, 0)
    return box[0]


def settle(error: BaseException | None) -> None:
    """End a phase: if any rank failed, raise the same error everywhere."""
    assert _CURRENT is not None
    statuses = gather(None if error is None else f"{type(error).__name__}: {error}")
    failed = [(rank, msg) for rank, msg in enumerate(statuses) if msg]
    if failed:
        rank, msg = failed[0]
        raise FeatpipeError(f"rank {rank} of {_CURRENT.world} failed: {msg}")


def on_leader(dist: Dist | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 (or alone); its value, or its error, reaches every rank."""
    if dist is None:
        return fn()
    value, error = None, None
    if dist.leader:
        try:
            value = fn()
        except Exception as exc:
            error = exc
    settle(error)
    return broadcast(value)


def everyone(dist: Dist | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank; any rank's error becomes every rank's error."""
    if dist is None:
        return fn()
    value, error = None, None
    try:
        value = fn()
    except Exception as exc:
        error = exc
    settle(error)
    return value


def _leaves(arguments: dict[str, Any]) -> dict[str, Any]:
    """Nested options (a backbone spec inside a request) by their own names, for the message."""
    flat: dict[str, Any] = {}
    for key, value in arguments.items():
        if isinstance(value, dict):
            for leaf, inner in _leaves(value).items():
                flat[leaf if leaf not in arguments else f"{key}.{leaf}"] = inner
        else:
            flat[key] = value
    return flat


def check_same(arguments: dict[str, Any]) -> None:
    """Every rank must have been started with the same arguments."""
    assert _CURRENT is not None
    text = json.dumps(_leaves(arguments), sort_keys=True, default=str)
    everyone = gather(text)
    for rank, other in enumerate(everyone):
        if other != everyone[0]:
            mine, theirs = json.loads(everyone[0]), json.loads(other)
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise FeatpipeError(
                f"mismatched arguments across ranks: rank {rank} differs from rank 0 in "
                f"{', '.join(diff)} ({theirs.get(diff[0])!r} vs {mine.get(diff[0])!r}); start "
                "every rank with the same command"
            )


def check_shared(directory: Path) -> None:
    """The cache directory must be one filesystem that every rank (on every node) sees."""
    assert _CURRENT is not None
    token = directory / f".dist-{uuid.uuid4().hex[:12]}"
    name = broadcast(token.name if _CURRENT.leader else None)
    token = directory / name
    if _CURRENT.leader:
        token.write_text(socket.gethostname())
    gather(None)  # barrier: the token exists before anyone looks
    seen = gather(token.is_file())
    gather(None)
    if _CURRENT.leader:
        token.unlink(missing_ok=True)
    blind = [rank for rank, ok in enumerate(seen) if not ok]
    if blind:
        raise FeatpipeError(
            f"cache directory {directory} is not shared: rank(s) {blind} cannot see files that "
            f"rank 0 writes there; pass a --cache-dir on a filesystem every node mounts"
        )


def part(n: int, rank: int, world: int) -> slice:
    """Contiguous, disjoint, near-equal parts of ``range(n)`` in order."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))
