"""Journals: a torn batch is dropped, a live writer's journal is left alone, and recovery seals
the rest into shards the index reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featpipe.cache.index import Stored, read_index
from featpipe.cache.journals import Journal, read_journal, recover_orphans


def test_torn_journal_loses_at_most_the_batch_in_flight(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "w000-1-abc-0000", 3, "float32", "k")
    journal.append([("a", 1, 1, "fa", "ha"), ("b", 1, 1, "fb", "hb")], np.ones((2, 3)), [])
    skip = ("bad", 1, 1, "fx", "zero-byte file")
    journal.append([("c", 1, 1, "fc", "hc")], np.full((1, 3), 2.0), [skip])
    journal.close()
    with journal.data_path.open("ab") as handle:  # a third batch: features half written
        handle.write(np.zeros(2, np.float32).tobytes())
    with journal.rows_path.open("a") as handle:  # and its line torn
        handle.write('{"ok": [["d", 1')
    contents = read_journal(journal.rows_path)
    assert [r[0] for r in contents.rows] == ["a", "b", "c"]
    assert contents.skipped == [skip]
    assert contents.features.tolist() == [[1, 1, 1], [1, 1, 1], [2, 2, 2]]
    assert recover_orphans(tmp_path) == 1
    index = read_index(tmp_path)
    assert index.find(("c", 1, 1), "fc") == Stored("w000-1-abc-0000.h5", 2, "fc", "hc")
    assert index.find(("c", 1, 1), "other") is None  # same path, size and mtime; other content
    assert index.skip_reason(("bad", 1, 1), "fx") == "zero-byte file"
    assert not list(tmp_path.glob("*.rows")) and not list(tmp_path.glob("*.jrnl"))


def test_live_journal_is_not_recovered_by_another_process(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "w000-1-abc-0000", 2, "float32", "k")
    journal.append([("a", 1, 1)], np.ones((1, 2)), [])
    assert recover_orphans(tmp_path) == 0  # the writer still holds its lock
    journal.close()
    assert recover_orphans(tmp_path) == 1
