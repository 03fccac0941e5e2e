"""A failed commit leases nothing (issue 14, "Disk full"): the leases its batch took are rolled
back in the mirror at once, except those a pending push still needs; the retried batch then
writes what the mirror says. The real full disk is in ``tests/root/test_disk_full.py``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from parrot_ipc.store.committer import Committer
from parrot_ipc.store.sqlite import DB_NAME

from .test_sqlite_store import NOW, _commit, _msg, _open


def _leases(d: Path) -> dict[str, float]:
    db = sqlite3.connect(d / DB_NAME)
    try:
        return dict(db.execute("SELECT id, lease_until FROM messages"))
    finally:
        db.close()


def test_a_lease_whose_commit_failed_is_ready_again_at_once(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    s = _open(tmp_path)
    for i in range(4):
        s.enqueue(_msg(f"00000000000{i + 1}000000", "bob"))
    _commit(s)
    received = [m.id for m in s.lease("bob", 2, NOW + 60)]  # a receive
    pushed = [m.id for m in s.lease("bob", 1, NOW + 60)]    # a push still waiting for its commit
    c = Committer(s, keep_lease=lambda mid: mid in pushed)
    real_apply = s.apply_ops

    def full_disk(ops: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(s, "apply_ops", full_disk)
    assert c.commit() is False
    # the receive's two messages are ready now, in order; the push's lease stands
    again = [m.id for m in s.lease("bob", 10, NOW + 120)]
    assert again == [*received, "000000000004000000"]
    monkeypatch.setattr(s, "apply_ops", real_apply)
    assert c.commit() is True
    assert _leases(tmp_path) == {received[0]: NOW + 120, received[1]: NOW + 120, pushed[0]: NOW + 60,
                                 "000000000004000000": NOW + 120}
    s.close()


def test_a_failed_lease_then_a_restart_leaves_the_messages_ready(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s = _open(tmp_path)
    s.enqueue(_msg("000000000001000000", "bob"))
    _commit(s)
    s.lease("bob", 10, NOW + 60)
    c = Committer(s)
    real_apply = s.apply_ops
    monkeypatch.setattr(s, "apply_ops", lambda ops: (_ for _ in ()).throw(sqlite3.OperationalError("full")))
    assert c.commit() is False
    monkeypatch.setattr(s, "apply_ops", real_apply)
    s.close()  # writes the requeued ops: the lease, rolled back, is 0
    assert _leases(tmp_path) == {"000000000001000000": 0.0}
