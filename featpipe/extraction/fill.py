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
from typing import Any

from featpipe.backbones.spec import BackboneSpec
from featpipe.backbones.weights import WeightsChoice
from featpipe.cache.fingerprints import Contents
from featpipe.cache.transaction import Transaction
from featpipe.data.datasets import Item
from featpipe.extraction import provenance, reuse
from featpipe.extraction.settle import ExtractRun, build
from featpipe.progress import Phase, Progress
from featpipe.runtime import distributed


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
) -> tuple[int, reuse.Reused, list[dict[str, Any]]]:
    """Compute the rows of ``run.dataset`` that no shard holds and commit its entry.

    Recovers killed runs' journals, copies rows from other datasets' entries (``copy``), splits
    the rest among torchrun ranks, claims them against concurrent extracts, extracts them into
    journals and shards, and (rank 0) commits the entry. Returns the rows extracted, the rows
    copied and every rank's record. The view cache (:mod:`featpipe.extraction.views`) runs
    its view rows through here too, with the same guarantees.
    """
    write = Transaction(run.entry, run.dataset, run.fields, int(run.settings["dim"]), contents)
    distributed.on_leader(dist, write.recover)
    pending = write.pending()
    copied = (
        distributed.on_leader(dist, lambda: _reuse(run, write, pending, say))
        if copy
        else reuse.Reused()
    )
    if copied.rows:
        pending = write.pending()
    mine = pending[distributed.part(len(pending), dist.rank, dist.world)] if dist else pending
    # Rows a concurrent extract is computing are left to it (torchrun ranks split theirs above).
    mine, claim = write.claim(mine, skip_claimed=dist is None)

    def work(items: list[Item]) -> tuple[int, float]:
        if not items:
            return 0, 0.0
        if run.backbone is None:
            run.backbone = build(spec, choice, run.timings, say)
        t0 = time.perf_counter()
        from featpipe.extraction.rows import extract_rows  # torch: a cache hit never gets here

        rank, world = (dist.rank, dist.world) if dist else (0, 1)
        with write.writer(rank, run.options.shard_rows) as writer:
            rows = extract_rows(run, items, writer, progress, world)
        run.timings["extract_s"] = time.perf_counter() - t0
        return rows, len(items) / run.timings["extract_s"]

    try:
        n_new, rate = distributed.everyone(dist, lambda: work(mine))
    finally:
        claim.release()
    if claim.elsewhere:  # then finish what the other writer left (it may have been killed)
        say(Phase("waiting", f"waiting for another extract computing {claim.elsewhere} rows"))
        claim.wait()
        write.recover()
        n_new += work(write.pending())[0]
    ranks = [{"rank": 0, "rows": n_new, "images_per_s": round(rate, 2), "host": platform.node()}]
    if dist is not None:
        ranks = distributed.gather(
            {
                "rank": dist.rank,
                "rows": n_new,
                "images_per_s": round(rate, 2),
                "seconds": round(run.timings.get("extract_s", 0.0), 2),
                "host": platform.node(),
            }
        )
        run.timings["extract_s"] = max(r["seconds"] for r in ranks)  # the slowest rank's loop
        n_new = sum(r["rows"] for r in ranks)

    def finish() -> None:
        record = provenance.run_record(
            device=run.device,
            settings=run.settings,
            timings=run.timings,
            extracted=n_new,
            copied=copied.rows,
            copied_from=copied.sources,
            pending=len(pending),
            wall_s=time.perf_counter() - start,
            ranks=ranks,
        )
        write.commit(provenance.merge(provenance.previous(run.entry), record))

    distributed.on_leader(dist, finish)
    return n_new, copied, ranks


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
