"""Idempotency keys of a durable store live in SQLite, not in the mirror (issue 14).

A key is found while its op is pending, while a failed commit is retried, and once committed
(then by a primary-key read of the ``idempotency`` table); the mirror never holds it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from parrot_ipc.core.protocol import SendResult
from parrot_ipc.store.ops import PutIdempotent

from .test_sqlite_store import NOW, _commit, _open

R1 = SendResult(id="000000000001000000", to="bob", status="queued")


def test_a_key_is_found_pending_committed_and_after_a_restart_and_never_in_the_mirror(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = _open(d)
    s.put_idempotent("alice", "k1", R1, NOW + 100)
    assert s.get_idempotent("alice", "k1", NOW) == R1  # pending: a resend in the same batch finds it
    assert s.get_idempotent("alice", "k2", NOW) is None
    assert s._idem.uncommitted_count() == 1
    _commit(s)
    assert s._idem.uncommitted_count() == 0
    assert s.get_idempotent("alice", "k1", NOW) == R1  # from the table
    assert s.get_idempotent("alice", "k1", NOW + 100) is None  # expired: until <= now
    assert s.get_idempotent("bob", "k1", NOW) is None  # keys are per sender
    assert s._mirror._idem == {}
    s.close()
    s2 = _open(d)
    assert s2._mirror._idem == {} and s2._idem.uncommitted_count() == 0
    assert s2.get_idempotent("alice", "k1", NOW) == R1
    s2.close()


def test_a_key_whose_commit_failed_is_still_found_and_committed_on_the_retry(tmp_path: Path) -> None:
    s = _open(tmp_path / "state")
    s.put_idempotent("alice", "k1", R1, NOW + 100)
    ops, _ = s.take_pending()
    assert any(isinstance(op, PutIdempotent) for op in ops)
    assert s.get_idempotent("alice", "k1", NOW) == R1  # handed to the writer, not yet committed
    bad = sqlite3.connect(":memory:")
    bad.close()
    real, s._db = s._db, bad
    with pytest.raises(sqlite3.Error):
        s.apply_ops(ops)
    s._db = real
    s.requeue(ops)
    assert s.get_idempotent("alice", "k1", NOW) == R1
    _commit(s)
    assert s._idem.uncommitted_count() == 0 and s.get_idempotent("alice", "k1", NOW) == R1
    s.close()


def test_purge_drops_expired_keys_pending_or_committed(tmp_path: Path) -> None:
    s = _open(tmp_path / "state")
    s.put_idempotent("alice", "old", R1, NOW + 10)
    _commit(s)
    s.put_idempotent("alice", "pending", R1, NOW + 10)
    s.put_idempotent("alice", "live", R1, NOW + 1000)
    s.purge(NOW + 20)
    assert s._idem.uncommitted_count() == 1
    _commit(s)
    assert s.get_idempotent("alice", "old", NOW) is None
    assert s.get_idempotent("alice", "live", NOW) == R1
    rows = s._db.execute("SELECT key FROM idempotency ORDER BY key").fetchall()
    assert rows == [("live",)]
    s.close()
