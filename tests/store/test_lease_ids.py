"""The lease heap holds ids, not messages (issue 14): an acked message leaves memory at once,
not when its lease would have run out; an expired lease of an acked id is skipped."""

from __future__ import annotations

import gc
from pathlib import Path

from parrot_ipc.store import MemoryStore, StoredMessage
from parrot_ipc.store.memory import LEASE_COMPACT_MIN

from .test_sqlite_store import NOW, _commit, _msg, _open

N = 5000


def _live_messages() -> int:
    """StoredMessage objects alive anywhere in this process."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, StoredMessage))


def _fill_and_drain(store: MemoryStore, n: int, first: int = 0) -> None:
    """Enqueue ``n`` messages to ``bob``, lease them (600 s) and ack them all, 100 at a time."""
    for i in range(first, first + n):
        store.enqueue(_msg(f"{i:018d}", "bob"))
    while True:
        got = store.lease("bob", 100, NOW + 600)
        if not got:
            return
        assert store.ack("bob", [m.id for m in got]) == [m.id for m in got]


def test_after_a_fill_and_drain_the_memory_store_holds_no_message() -> None:
    base = _live_messages()
    s = MemoryStore()
    _fill_and_drain(s, N)
    assert _live_messages() == base
    assert s.mailbox_usage("bob") == (0, 0)
    # only stale (lease_until, mailbox, id) entries may stay, fewer than the compaction floor
    assert len(s._lease_heap) < LEASE_COMPACT_MIN
    assert all(type(e[2]) is str for e in s._lease_heap)
    assert s.release_expired(NOW + 601) == []  # acked ids: skipped
    assert s.next_lease_expiry() is None


def test_an_expired_lease_releases_the_unacked_and_skips_the_acked() -> None:
    s = MemoryStore()
    for i in range(4):
        s.enqueue(_msg(f"{i:018d}", "bob"))
    ids = [m.id for m in s.lease("bob", 4, NOW + 60)]
    s.ack("bob", ids[:2])
    s.move_mailbox("bob", "robert")  # a leased message moved keeps its lease under the new name
    released = s.release_expired(NOW + 60)
    assert released == [("robert", ids[2]), ("robert", ids[3])]
    assert [m.id for m in s.lease("robert", 10, NOW + 120)] == ids[2:]


def test_after_a_fill_and_drain_the_sqlite_mirror_holds_no_message(tmp_path: Path) -> None:
    base = _live_messages()
    s = _open(tmp_path / "state")
    for rnd in range(3):
        for i in range(rnd * N, (rnd + 1) * N):
            s.enqueue(_msg(f"{i:018d}", "bob"))
        while got := s.lease("bob", 100, NOW + 600):
            s.ack("bob", [m.id for m in got])
        _commit(s)
    assert _live_messages() == base
    assert len(s._mirror._lease_heap) < LEASE_COMPACT_MIN
    s.close()
