"""Filling an entry: compute (or copy) the rows of a settled run that no shard holds, and commit.

The cache owns how rows are stored (:class:`~featpipe.cache.transaction.Transaction`: recover,
pending, claim, write, commit); this module decides which rows are computed, by whom and how:
copied from another dataset's entry when the same files are there
(:mod:`featpipe.extraction.reuse`), split among torchrun ranks, left to a concurrent extract
that claimed them first, and computed by the hot loop (:mod:`featpipe.extraction.rows`).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import WeightsChoice
from featpipe.cache.entry import Header
from featpipe.cache.fingerprints import Contents
from featpipe.cache.transaction import Transaction
from featpipe.data.datasets import Dataset, Item
from featpipe.extraction import provenance, reuse
from featpipe.extraction.settle import ExtractRun, build
from featpipe.progress import Phase, Progress
from featpipe.runtime import distributed


@dataclass(frozen=True)
class Part:
    """One entry that a forward pass fills: its settled run (key, settings, entry), and the
    columns of the pass's output that are its features (None: all of them)."""

    run: ExtractRun
    columns: np.ndarray | None = None


@dataclass(frozen=True)
class Filled:
    """What a fill did for one entry: rows extracted, rows copied, every rank's record, and
    the header of the entry it committed (None on the ranks that did not commit it)."""

    extracted: int
    copied: reuse.Reused
    ranks: list[dict[str, Any]]
    header: Header | None = None


def fill(
    run: ExtractRun,
    contents: Contents,
    spec: BackboneSpec,
    choice: WeightsChoice,
    dist: distributed.Dist | None,
    start: float,
    say: Callable[[Phase], None],
    progress: Callable[[Progress], None] | None,
    copy: bool = True,
) -> Filled:
    """Compute the rows of ``run.dataset`` that no shard holds and commit its entry.

    Recovers killed runs' journals, copies rows from other datasets' entries (``copy``), splits
    the rest among torchrun ranks, claims them against concurrent extracts, extracts them into
    journals and shards, and (rank 0) commits the entry. Returns the rows extracted, the rows
    copied, every rank's record and the committed entry's header. The view cache
    (:mod:`featpipe.extraction.views`) runs its view rows through here too, with the same
    guarantees.
    """
    [done] = fill_parts(run, [Part(run)], contents, spec, choice, dist, start, say, progress, copy)
    return done


def fill_parts(
    run: ExtractRun,
    parts: list[Part],
    contents: Contents,
    spec: BackboneSpec,
    choice: WeightsChoice,
    dist: distributed.Dist | None,
    start: float,
    say: Callable[[Phase], None],
    progress: Callable[[Progress], None] | None,
    copy: bool = True,
) -> list[Filled]:
    """:func:`fill` for several entries from one forward pass of ``run``'s backbone (``spec``).

    Each entry goes through every step on its own (recover, copy, pending, claim, journals,
    commit with its own provenance); the pass computes the union of the rows they lack, once,
    and each entry's journal takes its rows and its columns (:class:`~featpipe.extraction.rows.
    Parts`). With one part taking every column, this is :func:`fill`.
    """
    writes = [
        Transaction(p.run.entry, run.dataset, p.run.fields, int(p.run.settings["dim"]), contents)
        for p in parts
    ]
    for write in writes:
        distributed.on_leader(dist, write.recover)
    pending = [write.pending() for write in writes]
    copied = [reuse.Reused() for _ in parts]
    for i, (part, write) in enumerate(zip(parts, writes, strict=True)):
        if copy:
            copied[i] = distributed.on_leader(
                dist, lambda p=part, w=write, lacking=pending[i]: _reuse(p.run, w, lacking, say)
            )
        if copied[i].rows:
            pending[i] = write.pending()
    union = _union(run.dataset, pending)
    mine = union[distributed.part(len(union), dist.rank, dist.world)] if dist else union
    # Rows a concurrent extract is computing are left to it (torchrun ranks split theirs above).
    lacks = [_paths(lacking) for lacking in pending]
    claims = [
        write.claim([i for i in mine if i.relpath in paths], skip_claimed=dist is None)
        for write, paths in zip(writes, lacks, strict=True)
    ]

    def work(wanted: list[list[Item]]) -> tuple[list[int], float]:
        items = _union(run.dataset, wanted)
        if not items:
            return [0] * len(parts), 0.0
        if run.backbone is None and not run.without_torch:
            run.backbone = build(spec, choice, run.timings, say)
        t0 = time.perf_counter()
        # torch: a cache hit never gets here
        from featpipe.extraction.rows import Parts, extract_rows

        rank, world = (dist.rank, dist.world) if dist else (0, 1)
        whole = len(parts) == 1 and len(wanted[0]) == len(items)
        with ExitStack() as stack:
            writers = [
                stack.enter_context(write.writer(rank, run.options.shard_rows)) for write in writes
            ]
            sink = Parts(
                writers,
                [p.columns for p in parts],
                [None if whole else _paths(w) for w in wanted],
                run.fields.dtype,
            )
            extract_rows(run, items, sink, progress, world)
        run.timings["extract_s"] = time.perf_counter() - t0
        return sink.kept, len(items) / run.timings["extract_s"]

    try:
        n_new, rate = distributed.everyone(dist, lambda: work([m for m, _ in claims]))
    finally:
        for _, claim in claims:
            claim.release()
    waited = [claim.elsewhere > 0 for _, claim in claims]
    if any(waited):  # then finish what the other writer left (it may have been killed)
        rows = sum(claim.elsewhere for _, claim in claims)
        say(Phase("waiting", f"waiting for another extract computing {rows} rows"))
        for (_, claim), write in zip(claims, writes, strict=True):
            if claim.elsewhere:
                claim.wait()
                write.recover()
        more = work([w.pending() if wait else [] for w, wait in zip(writes, waited, strict=True)])
        n_new = [a + b for a, b in zip(n_new, more[0], strict=True)]
    ranks = [
        [{"rank": 0, "rows": n, "images_per_s": round(rate, 2), "host": platform.node()}]
        for n in n_new
    ]
    if dist is not None:
        gathered = distributed.gather(
            {
                "rank": dist.rank,
                "rows": n_new,
                "images_per_s": round(rate, 2),
                "seconds": round(run.timings.get("extract_s", 0.0), 2),
                "host": platform.node(),
            }
        )
        run.timings["extract_s"] = max(r["seconds"] for r in gathered)  # the slowest rank's loop
        ranks = [[r | {"rows": r["rows"][i]} for r in gathered] for i in range(len(parts))]
        n_new = [sum(r["rows"] for r in part) for part in ranks]

    headers: list[Header | None] = [None] * len(parts)

    def finish() -> None:
        for i, (part, write, n, got, lacking, record_ranks) in enumerate(
            zip(parts, writes, n_new, copied, pending, ranks, strict=True)
        ):
            record = provenance.run_record(
                device=run.device,
                # the pass's settings (the loop adds its workers) with the entry's own
                settings=run.settings | part.run.settings,
                timings=run.timings,
                extracted=n,
                copied=got.rows,
                copied_from=got.sources,
                pending=len(lacking),
                wall_s=time.perf_counter() - start,
                ranks=record_ranks,
            )
            headers[i] = write.commit(provenance.merge(provenance.previous(part.run.entry), record))

    distributed.on_leader(dist, finish)
    return [
        Filled(n, got, record_ranks, header)
        for n, got, record_ranks, header in zip(n_new, copied, ranks, headers, strict=True)
    ]


def _paths(items: list[Item]) -> set[str]:
    return {i.relpath for i in items}


def _union(dataset: Dataset, parts: list[list[Item]]) -> list[Item]:
    """The items any of ``parts`` holds, in dataset order (one list: itself, as it is)."""
    if len(parts) == 1:
        return parts[0]
    wanted = set().union(*map(_paths, parts))
    return [i for i in dataset.items if i.relpath in wanted]


def _reuse(
    run: ExtractRun, write: Transaction, pending: list[Item], say: Callable[[Phase], None]
) -> reuse.Reused:
    """Copy the rows of pending files that another dataset's entry holds (same key, same
    content), through a journal like extracted rows."""
    others = reuse.siblings(run.entry, run.fields.digest) if pending else []
    if not others:
        return reuse.Reused()
    say(Phase("copying", f"looking for {len(pending)} files in {len(others)} other entries"))
    t0 = time.perf_counter()
    with write.writer() as writer:
        copied = reuse.copy_rows(others, pending, write.contents, writer)
    run.timings["copy_s"] = time.perf_counter() - t0
    return copied
