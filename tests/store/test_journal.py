"""The journal: every mutation of a SqliteStore goes through it, and reads write nothing.

Also: the op->SQL table covers every op class, SqliteStore implements every Store method
itself (it wraps a MemoryStore; nothing is inherited), and a batch costs one executemany per
run of same-class ops.
"""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path
from typing import Any, cast

from parrot_ipc.core.protocol import SendResult
from parrot_ipc.store import MemoryStore, Store
from parrot_ipc.store import ops as journal
from parrot_ipc.store.mailboxes import DiskMailboxes
from parrot_ipc.store.sqlite import DB_NAME, SqliteStore

from .test_sqlite_store import NOW, _commit, _msg, _open, _session, _snapshot


def _rows(d: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{d / DB_NAME}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_reading_an_expired_forward_changes_nothing_and_the_purge_that_follows_deletes_it(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = _open(d)
    s.put_forward("alice", "alicia", NOW + 10)
    _commit(s)
    seq = s.written_seq

    # a read after expiry: None, and no change anywhere (mirror, journal, disk)
    assert s.get_forward("alice", NOW + 20) is None
    assert s.written_seq == seq and s.take_pending() == ([], seq)
    assert s._mirror.forward("alice") == ("alicia", NOW + 10)
    assert _rows(d, "SELECT old, new, until FROM forwards") == [("alice", "alicia", NOW + 10)]

    # the purge deletes it from the mirror and, once committed, from SQLite
    s.purge(NOW + 20)
    assert s.written_seq == seq + 1
    assert s._mirror.forward("alice") is None
    _commit(s)
    assert _rows(d, "SELECT old FROM forwards") == []
    s.close()


def test_after_expired_reads_the_mirror_and_the_database_agree_through_a_restart(tmp_path: Path) -> None:
    """Before the fix, get_forward deleted an expired forward from the mirror only: the
    forward came back from SQLite at the next start."""
    d = tmp_path / "state"
    s = _open(d)
    s.put_forward("alice", "alicia", NOW + 10)
    s.put_idempotent("bob", "k", SendResult(id="000000000001000000", to="carol", status="queued"), NOW + 10)
    s.put_session(_session("carol", b"c" * 32))
    _commit(s)
    assert s.get_forward("alice", NOW + 20) is None
    assert s.get_idempotent("bob", "k", NOW + 20) is None
    assert s.get_session(b"c" * 32) is not None
    _commit(s)
    before = _snapshot(s)
    s.close()
    s2 = _open(d)  # the test clock is NOW: nothing has expired at open
    assert _snapshot(s2) == before
    assert s2.get_forward("alice", NOW) == "alicia"
    s2.close()


def test_every_op_class_has_an_sql_entry() -> None:
    kinds = set(journal.Op.__subclasses__())
    assert len(kinds) == 15
    assert kinds == set(journal.SQL)


def test_sqlite_store_implements_every_store_method_itself() -> None:
    """It wraps a MemoryStore (sessions, names, forwards) and is a DiskMailboxes (messages):
    a Store method neither defined would be missing, not silently inherited unjournaled."""
    assert not issubclass(SqliteStore, MemoryStore)
    names = {n for n, _ in inspect.getmembers(Store, inspect.isfunction) if not n.startswith("_")}
    assert len(names) == 31  # 29 + queued, sender_usage (issue 14)
    assert names <= set(vars(SqliteStore)) | set(vars(DiskMailboxes))
    mail = {"enqueue", "mailbox_usage", "sender_usage", "lease", "ack", "release_expired", "next_lease_expiry",
            "move_mailbox", "mailbox_names", "queued", "expire_mail"}
    assert mail <= set(vars(DiskMailboxes)) and not mail & set(vars(SqliteStore))


class _Recorder:
    """Stands in for a sqlite3.Connection: records (method, sql, rows)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[Any]]] = []

    def executemany(self, sql: str, rows: Any) -> None:
        self.calls.append(("executemany", sql, [tuple(r) for r in rows]))

    def execute(self, sql: str, params: Any = ()) -> None:
        self.calls.append(("execute", sql, [tuple(params)]))


def test_a_run_of_same_class_ops_is_one_executemany() -> None:
    ms = [journal.PutMessage.of(_msg(f"00000000000{i}000000", "bob")) for i in range(5)]
    batch: list[journal.Op] = [*ms[:3], journal.SetLease(NOW + 60, ("a", "b")), journal.SetLease(0.0, ("c",)),
                               *ms[3:], journal.Purge(NOW), journal.MoveMailbox("bob", "robert")]
    rec = _Recorder()
    journal.write(cast(sqlite3.Connection, rec), batch)
    kinds = [(m, sql.split()[0], len(rows)) for m, sql, rows in rec.calls]
    assert kinds == [
        ("executemany", "INSERT", 3),
        ("executemany", "UPDATE", 3),  # two SetLease ops, three rows
        ("executemany", "INSERT", 2),
        ("executemany", "DELETE", 1), ("executemany", "DELETE", 1), ("executemany", "DELETE", 1),
        ("executemany", "UPDATE", 1),
        # no meta last_id: the batch deletes no message (issue 14)
    ]
    assert rec.calls[1][2] == [(NOW + 60, "a"), (NOW + 60, "b"), (0.0, "c")]
    assert rec.calls[6][2] == [("bob", "robert")] and "?2" in rec.calls[6][1]
    assert all("meta" not in sql for _, sql, _ in rec.calls)


def test_a_batch_is_one_transaction(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = _open(d)
    s.enqueue(_msg("000000000001000000", "bob"))
    ops, _ = s.take_pending()
    bad: list[journal.Op] = [*ops, journal.DeleteSession(b"x"), journal.TouchInstances((("x", NOW),))]
    s._db.execute("CREATE TEMP TRIGGER fail BEFORE INSERT ON instances BEGIN SELECT RAISE(ABORT, 'no'); END")
    try:
        s.apply_ops(bad)
    except sqlite3.IntegrityError:
        pass
    else:
        raise AssertionError("the trigger should have failed the batch")
    assert _rows(d, "SELECT count(*) FROM messages") == [(0,)]  # rolled back with it
    s._db.execute("DROP TRIGGER fail")
    s.requeue(ops)
    _commit(s)
    assert _rows(d, "SELECT id FROM messages") == [("000000000001000000",)]
    s.close()


def test_a_lease_of_a_message_inserted_by_the_same_batch_rides_on_its_insert() -> None:
    """A pushed message is inserted and leased before one commit: no UPDATE for it, the last
    lease of the batch wins, other ids keep their SetLease, and the ops given are not changed
    (a failed batch is requeued as it was)."""
    put = journal.PutMessage.of(_msg("000000000001000000", "bob"))
    batch: list[journal.Op] = [put, journal.SetLease(NOW + 60, ("000000000001000000", "0000000000000000aa"), "bob"),
                               journal.SetLease(NOW + 90, ("000000000001000000",), "bob")]
    rec = _Recorder()
    journal.write(cast(sqlite3.Connection, rec), batch)
    (_, insert, rows), (_, update, leases) = rec.calls
    assert insert.startswith("INSERT") and rows[0][-1] == NOW + 90  # lease_until, the last one
    assert update.startswith("UPDATE") and leases == [(NOW + 60, "0000000000000000aa")]
    assert batch[0] is put and put.lease_until == 0.0 and len(batch) == 3
