"""Fewer pages per commit (issue 14): a send writes no ``meta`` row, a batch that deletes the
highest message id keeps it in ``meta`` (ids stay unique across restarts), and ``last_seen``
is written at most once per second per instance."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from parrot_ipc.store.sqlite import DB_NAME

from .test_sqlite_store import NOW, _commit, _msg, _open


def _meta(d: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(d / DB_NAME)
    try:
        return db.execute("SELECT key, value FROM meta").fetchall()
    finally:
        db.close()


def test_sends_write_no_meta_row_and_acking_an_older_message_neither(tmp_path: Path) -> None:
    s = _open(tmp_path)
    s.enqueue(_msg("000000000001000000", "bob"))
    s.enqueue(_msg("000000000002000000", "bob"))
    _commit(s)
    assert _meta(tmp_path) == []
    s.ack("bob", ["000000000001000000"])
    _commit(s)
    assert _meta(tmp_path) == []  # the highest id is still in messages
    s.close()


def test_a_message_stored_and_acked_in_one_batch_keeps_its_id_issued(tmp_path: Path) -> None:
    s = _open(tmp_path)
    s.enqueue(_msg("000000000001000000", "bob"))
    _commit(s)
    s.enqueue(_msg("000000000005000000", "bob"))
    s.ack("bob", ["000000000005000000", "000000000001000000"])  # same batch as its PutMessage
    _commit(s)
    assert _meta(tmp_path) == [("last_id", "000000000005000000")]
    s.close()
    s2 = _open(tmp_path)
    assert s2.max_id == "000000000005000000" and s2.mailbox_usage("bob") == (0, 0)
    s2.close()


def test_last_seen_is_written_at_most_once_a_second_per_instance(tmp_path: Path) -> None:
    s = _open(tmp_path)
    s.touch_instance("bob", NOW)
    s.enqueue(_msg("000000000001000000", "bob"))
    _commit(s)
    s.touch_instance("bob", NOW + 0.5)  # within the second: memory only
    s.enqueue(_msg("000000000002000000", "bob"))
    ops, _ = s.take_pending()
    assert [type(op).__name__ for op in ops] == ["PutMessage"]
    s.apply_ops(ops)
    assert s.last_seen("bob") == NOW + 0.5  # what clients read is exact
    s.touch_instance("bob", NOW + 1.2)
    s.close()
    s2 = _open(tmp_path)
    assert s2.last_seen("bob") == NOW + 1.2
    s2.close()
