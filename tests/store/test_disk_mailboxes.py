"""SQLite as the source of truth for messages (issue 14): the durable store answers every
mailbox call as the in-memory store does, while its messages live in SQLite, whether a call
comes before or after the commit of what it depends on; and a deep mailbox leaves no message
in memory."""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from parrot_ipc.core.protocol import Message
from parrot_ipc.store import MemoryStore, StoredMessage, mailboxes
from parrot_ipc.store.boxes import KEEP_IDS
from parrot_ipc.store.ops import Op
from parrot_ipc.store.sqlite import SqliteStore

from .test_sqlite_store import NOW, _commit, _open

BOXES = ["a", "b", "c"]


def _item(n: int, box: str, payer: int | None) -> StoredMessage:
    m = Message(id=f"{n:018x}", from_="s", to=box, content=f"m{n}", sent_at="2027-01-15T08:00:00.000Z")
    return StoredMessage(m, box, 10 + n % 7, payer=payer)


class SameAsMemory(RuleBasedStateMachine):
    """Random enqueue / lease / ack / expiry / rename / commit / restart against both stores."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="parrot-disk-"))
        self.disk = _open(self.dir / "state", cache_bytes=2000)  # a tiny cache: most bodies are read back
        self.mem = MemoryStore()
        self.n = 0
        self.now = NOW
        self.leased: list[tuple[str, str]] = []
        self.in_flight: list[Op] | None = None  # taken by the "writer thread", not yet applied
        setattr(mailboxes, "KEEP_IDS", 2)  # noqa: B010 - a short backlog: pages are read all the time

    def teardown(self) -> None:
        self.write_taken()
        self.disk.close()
        setattr(mailboxes, "KEEP_IDS", KEEP_IDS)  # noqa: B010
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(box=st.sampled_from(BOXES), payer=st.sampled_from([None, 1000, 1001]), k=st.integers(1, 30))
    def enqueue(self, box: str, payer: int | None, k: int) -> None:
        for _ in range(k):
            self.n += 1
            self.disk.enqueue(_item(self.n, box, payer))
            self.mem.enqueue(_item(self.n, box, payer))

    @rule(box=st.sampled_from(BOXES), k=st.integers(1, 40), lease_s=st.sampled_from([5.0, 50.0]))
    def lease(self, box: str, k: int, lease_s: float) -> None:
        got = self.disk.lease(box, k, self.now + lease_s)
        want = self.mem.lease(box, k, self.now + lease_s)
        assert [(m.id, m.content) for m in got] == [(m.id, m.content) for m in want]
        self.leased += [(box, m.id) for m in got]

    @rule(data=st.data(), box=st.sampled_from(BOXES))
    def ack(self, data: st.DataObject, box: str) -> None:
        mine = [mid for b, mid in self.leased if b == box]
        ids = data.draw(st.lists(st.sampled_from(mine), max_size=10)) if mine else []
        ids += [f"{data.draw(st.integers(1, max(self.n, 1))):018x}"]  # an id maybe never leased, maybe on disk
        assert self.disk.ack(box, ids) == self.mem.ack(box, ids)

    @rule(dt=st.sampled_from([1.0, 10.0, 60.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        assert sorted(self.disk.release_expired(self.now)) == sorted(self.mem.release_expired(self.now))

    @rule(box=st.sampled_from(BOXES), back=st.integers(0, 40))
    def expire(self, box: str, back: int) -> None:
        before = f"{max(0, self.n - back):018x}"
        assert sorted(self.disk.expire_mail(box, before)) == sorted(self.mem.expire_mail(box, before))

    @rule(old=st.sampled_from(BOXES), new=st.sampled_from(BOXES))
    def rename(self, old: str, new: str) -> None:
        if old == new:
            return
        self.disk.move_mailbox(old, new)
        self.mem.move_mailbox(old, new)
        self.leased = [(new if b == old else b, mid) for b, mid in self.leased]
        self.commit()  # a moved range waits for its commit (by design): commit before comparing

    @rule()
    def commit(self) -> None:
        self.write_taken()
        _commit(self.disk)

    @precondition(lambda self: self.in_flight is None)
    @rule()
    def take(self) -> None:
        """The writer thread takes a batch; the event loop goes on before it is committed."""
        self.in_flight, _ = self.disk.take_pending()

    @rule()
    def write_taken(self) -> None:
        if self.in_flight is not None:
            self.disk.apply_ops(self.in_flight)
            self.in_flight = None

    @precondition(lambda self: self.n % 3 == 0)
    @rule()
    def restart(self) -> None:
        """Leases survive; so does every message and count."""
        self.write_taken()
        self.disk.close()
        self.disk = SqliteStore.open(str(self.dir / "state"), clock=lambda: self.now, cache_bytes=2000)

    @invariant()
    def same_counts(self) -> None:
        for box in BOXES:
            assert self.disk.mailbox_usage(box) == self.mem.mailbox_usage(box), box
        for uid in (1000, 1001):
            assert self.disk.sender_usage(uid) == self.mem.sender_usage(uid)
        assert sorted(self.disk.mailbox_names()) == sorted(self.mem.mailbox_names())


TestSameAsMemory = SameAsMemory.TestCase
TestSameAsMemory.settings = settings(max_examples=int(__import__("os").environ.get("PARROT_EXAMPLES", "60")), stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


def _messages_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Message))


def test_a_deep_committed_mailbox_holds_no_message_and_no_id_in_memory(tmp_path: Path) -> None:
    s = _open(tmp_path / "state", cache_bytes=0)
    base = _messages_alive()
    for i in range(1, 5001):
        s.enqueue(_item(i, "bob", 1000))
    _commit(s)
    s.enqueue(_item(5001, "bob", 1000))  # its commit has not been taken in yet: still in memory
    assert s.mailbox_usage("bob")[0] == 5001 and s.sender_usage(1000)[0] == 5001
    # only the newest KEEP_IDS committed ids and the uncommitted one; no body (cache 0) but that one
    assert len(s._mem) == KEEP_IDS + 1 and _messages_alive() - base <= 1
    got = s.lease("bob", 10, NOW + 60)  # one page from the index, oldest first
    assert [m.content for m in got] == [f"m{i}" for i in range(1, 11)]
    assert len(s._mem) <= KEEP_IDS + 1 + 16  # and the leased ten, the rest of their page
    s.close()
    s2 = _open(tmp_path / "state", cache_bytes=0)
    assert s2.mailbox_usage("bob")[0] == 5001 and s2.sender_usage(1000) == s.sender_usage(1000)
    assert len(s2._mem) == 10  # only the leases still running
    assert [m.content for m in s2.lease("bob", 3, NOW + 60)] == ["m11", "m12", "m13"]
    s2.close()


def test_an_ack_before_its_delete_is_committed_is_never_delivered_again(tmp_path: Path) -> None:
    s = _open(tmp_path / "state", cache_bytes=0)
    for i in range(1, 41):
        s.enqueue(_item(i, "bob", None))
    _commit(s)
    # Ack ids never leased (they are on disk only), before the delete is committed.
    assert s.ack("bob", [f"{i:018x}" for i in range(1, 21)]) == [f"{i:018x}" for i in range(1, 21)]
    got = s.lease("bob", 100, NOW + 60)
    assert [m.content for m in got] == [f"m{i}" for i in range(21, 41)]
    assert s.ack("carol", [f"{i:018x}" for i in range(21, 41)]) == []  # never another mailbox's
    s.close()


def test_a_renamed_mailbox_is_served_in_id_order_once_its_move_is_committed(tmp_path: Path) -> None:
    s = _open(tmp_path / "state", cache_bytes=0)
    n = 2 * (KEEP_IDS + 5)  # each mailbox: 5 committed ids leave memory, KEEP_IDS stay
    for i in range(1, n + 1):
        s.enqueue(_item(i, "old" if i % 2 else "new", None))
    _commit(s)
    s.move_mailbox("old", "new")
    assert s.mailbox_usage("new")[0] == n and s.mailbox_usage("old") == (0, 0)
    on_disk_of_old = [f"m{i}" for i in range(1, 10, 2)]  # old's 5 oldest
    waiting = [m.content for m in s.lease("new", n, NOW + 60)]
    assert waiting == [f"m{i}" for i in range(1, n + 1) if f"m{i}" not in on_disk_of_old]  # in id order
    _commit(s)  # the moved rows join once the move is committed
    assert [m.content for m in s.lease("new", n, NOW + 60)] == on_disk_of_old
    s.close()
