"""The in-memory store: every record in dicts and heaps, gone when the broker stops.

:class:`MemoryStore` implements :class:`parrot_ipc.store.base.Store`. It is the whole store of a
throwaway broker (``--store memory``) and of the core's tests, and the mirror that
:class:`parrot_ipc.store.sqlite.SqliteStore` serves every read from. Reads never mutate; every
mutation is one public method call, which is what lets the SQLite store journal each one.
Times are seconds since the Unix epoch; sizes are bytes.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .charges import Charges

if TYPE_CHECKING:  # annotations only: importing the core here would be circular (core imports store)
    from ..core.protocol import Message, SendResult
    from .base import Session, StoredMessage


#: Stale lease-heap entries tolerated before :meth:`MemoryStore._compact_leases` may rebuild it.
LEASE_COMPACT_MIN = 1024


@dataclass(slots=True)
class _Mailbox:
    """One mailbox: messages by id (kept in id order), a heap of ready ids, total bytes."""

    msgs: dict[str, StoredMessage] = field(default_factory=dict)
    ready: list[str] = field(default_factory=list)  # heap of ids: FIFO by arrival
    size_bytes: int = 0



class MemoryStore:
    """A :class:`~parrot_ipc.store.base.Store` in process memory: fast, and gone when the
    broker stops. Not journaled, and not thread-safe (the broker calls it from one thread).

    Lease, ack and receive cost O(k log n) for k messages, whatever the mailbox depth. The
    lease heap holds ``(lease_until, mailbox, id)``, not messages, so an acked message leaves
    memory at once (issue 14); its heap entry goes stale and is skipped, and the heap is
    rebuilt without stale entries once they are more than half of it (and over
    :data:`LEASE_COMPACT_MIN`).
    Expired forwards, idempotency keys and sessions stay until :meth:`purge`; lookups skip
    the expired ones.
    """

    def __init__(self) -> None:
        self._sessions: dict[bytes, Session] = {}
        self._by_instance: dict[str, Session] = {}
        self._last_seen: dict[str, float] = {}
        self._owners: dict[str, tuple[int, float]] = {}
        self._boxes: dict[str, _Mailbox] = {}
        self._lease_heap: list[tuple[float, str, str]] = []  # (lease_until, mailbox, id)
        self._stale_leases = 0  # heap entries known stale (acked, unleased, moved)
        self._forwards: dict[str, tuple[str, float]] = {}
        self._idem: dict[tuple[str, str], tuple[SendResult, float]] = {}
        self._idem_order: deque[tuple[float, str, str]] = deque()
        self._charges = Charges()

    # sessions ---------------------------------------------------------------
    def put_session(self, session: Session) -> None:
        """:meth:`~parrot_ipc.store.base.Store.put_session`: O(1)."""
        self._sessions[session.token_hash] = session
        self._by_instance[session.instance_id] = session

    def get_session(self, token_hash: bytes) -> Session | None:
        """:meth:`~parrot_ipc.store.base.Store.get_session`: O(1)."""
        return self._sessions.get(token_hash)

    def session_of(self, instance_id: str) -> Session | None:
        """:meth:`~parrot_ipc.store.base.Store.session_of`: O(1)."""
        return self._by_instance.get(instance_id)

    def update_session(self, session: Session, previous_instance_id: str | None = None) -> None:
        """:meth:`~parrot_ipc.store.base.Store.update_session`: re-index ``session`` under its (new) name."""
        if previous_instance_id is not None and self._by_instance.get(previous_instance_id) is session:
            del self._by_instance[previous_instance_id]
        self._by_instance[session.instance_id] = session

    def delete_session(self, session: Session) -> None:
        """:meth:`~parrot_ipc.store.base.Store.delete_session`: its name is freed only if it still maps to ``session``."""
        self._sessions.pop(session.token_hash, None)
        if self._by_instance.get(session.instance_id) is session:
            del self._by_instance[session.instance_id]

    def sessions(self) -> Iterable[Session]:
        """:meth:`~parrot_ipc.store.base.Store.sessions`: a list, one per name held."""
        return list(self._by_instance.values())

    # instances --------------------------------------------------------------
    def touch_instance(self, instance_id: str, now: float) -> None:
        """:meth:`~parrot_ipc.store.base.Store.touch_instance`: ``now`` in seconds since the epoch."""
        self._last_seen[instance_id] = now

    def last_seen(self, instance_id: str) -> float | None:
        """:meth:`~parrot_ipc.store.base.Store.last_seen`: seconds since the epoch, or None if never seen."""
        return self._last_seen.get(instance_id)

    def instance_ids(self) -> Iterable[str]:
        """:meth:`~parrot_ipc.store.base.Store.instance_ids`: a list."""
        return list(self._last_seen)

    def rename_instance(self, old: str, new: str, now: float) -> None:
        """:meth:`~parrot_ipc.store.base.Store.rename_instance`: ``new`` is seen at ``now`` (seconds since the epoch)."""
        self._last_seen.pop(old, None)
        self._last_seen[new] = now

    # name owners ------------------------------------------------------------
    def name_owner(self, instance_id: str) -> int | None:
        """:meth:`~parrot_ipc.store.base.Store.name_owner`: O(1)."""
        hit = self._owners.get(instance_id)
        return None if hit is None else hit[0]

    def put_name_owner(self, instance_id: str, uid: int, now: float) -> None:
        """:meth:`~parrot_ipc.store.base.Store.put_name_owner`: ``now`` in seconds since the epoch."""
        self._owners[instance_id] = (uid, now)

    def delete_name_owner(self, instance_id: str) -> None:
        """:meth:`~parrot_ipc.store.base.Store.delete_name_owner`: nothing happens if nobody owns it."""
        self._owners.pop(instance_id, None)

    def name_owners(self) -> Iterable[tuple[str, int]]:
        """:meth:`~parrot_ipc.store.base.Store.name_owners`: a list."""
        return [(name, uid) for name, (uid, _) in self._owners.items()]

    # mailboxes --------------------------------------------------------------
    def enqueue(self, item: StoredMessage) -> None:
        """:meth:`~parrot_ipc.store.base.Store.enqueue`: O(log n). ``item.message.id`` must sort after the mailbox's earlier ids."""
        box = self._boxes.get(item.mailbox)
        if box is None:
            box = self._boxes[item.mailbox] = _Mailbox()
        box.msgs[item.message.id] = item
        box.size_bytes += item.size_bytes
        heapq.heappush(box.ready, item.message.id)
        self._charges.add(item.payer, item.size_bytes)

    def sender_usage(self, uid: int) -> tuple[int, int]:
        """:meth:`~parrot_ipc.store.base.Store.sender_usage`: ``(count, bytes)``, O(1)."""
        return self._charges.usage(uid)

    def mailbox_usage(self, mailbox: str) -> tuple[int, int]:
        """:meth:`~parrot_ipc.store.base.Store.mailbox_usage`: ``(count, bytes)``, O(1)."""
        box = self._boxes.get(mailbox)
        return (len(box.msgs), box.size_bytes) if box else (0, 0)

    def lease(self, mailbox: str, max_count: int, lease_until: float) -> list[Message]:
        """:meth:`~parrot_ipc.store.base.Store.lease`: O(k log n) for k messages; ``lease_until`` in seconds since the epoch."""
        box = self._boxes.get(mailbox)
        if box is None:
            return []
        out: list[Message] = []
        ready, msgs = box.ready, box.msgs
        while ready and len(out) < max_count:
            mid = heapq.heappop(ready)
            item = msgs.get(mid)
            if item is None or item.lease_until:
                continue  # acked, or already leased: a stale heap entry
            item.lease_until = lease_until
            heapq.heappush(self._lease_heap, (lease_until, mailbox, mid))
            out.append(item.message)
        return out

    def ack(self, mailbox: str, ids: Iterable[str]) -> list[str]:
        """:meth:`~parrot_ipc.store.base.Store.ack`: returns the ids that were there, in the order given; O(k)."""
        box = self._boxes.get(mailbox)
        if box is None:
            return []
        done = []
        for mid in ids:
            item = box.msgs.pop(mid, None)
            if item is not None:
                box.size_bytes -= item.size_bytes
                self._charges.remove(item.payer, item.size_bytes)
                if item.lease_until > 0:
                    self._stale_leases += 1  # its lease-heap entry is now stale
                item.lease_until = -1.0
                done.append(mid)
        if not box.msgs:
            del self._boxes[mailbox]
        self._compact_leases()
        return done

    def release_expired(self, now: float) -> list[tuple[str, str]]:
        """:meth:`~parrot_ipc.store.base.Store.release_expired`: O(k log n) for k expired leases (stale heap entries are skipped)."""
        heap: list[tuple[float, str, str]] = self._lease_heap
        out: list[tuple[str, str]] = []
        while heap and heap[0][0] <= now:
            until, name, mid = heapq.heappop(heap)
            item = self._leased(until, name, mid)
            if item is None:
                self._stale_leases = max(0, self._stale_leases - 1)
                continue
            box = self._boxes[name]
            item.lease_until = 0.0
            heapq.heappush(box.ready, mid)
            out.append((name, mid))
        return out

    def _leased(self, until: float, name: str, mid: str) -> StoredMessage | None:
        """The message a lease-heap entry stands for, or None if the entry is stale."""
        box = self._boxes.get(name)
        item = box.msgs.get(mid) if box is not None else None
        return item if item is not None and item.lease_until == until else None

    def _compact_leases(self) -> None:
        """Rebuild the lease heap without its stale entries once they are over half of it and
        over :data:`LEASE_COMPACT_MIN`: O(n), amortised O(1) per ack."""
        heap = self._lease_heap
        if self._stale_leases < LEASE_COMPACT_MIN or 2 * self._stale_leases < len(heap):
            return
        heap[:] = [e for e in heap if self._leased(*e) is not None]
        heapq.heapify(heap)
        self._stale_leases = 0

    def next_lease_expiry(self) -> float | None:
        """:meth:`~parrot_ipc.store.base.Store.next_lease_expiry`: seconds since the epoch, or None; O(1)."""
        return self._lease_heap[0][0] if self._lease_heap else None

    def move_mailbox(self, old: str, new: str) -> None:
        """:meth:`~parrot_ipc.store.base.Store.move_mailbox`: leased messages stay leased; a merge re-sorts ``new`` by id."""
        src = self._boxes.pop(old, None)
        if src is None:
            return
        dst = self._boxes.get(new)
        if dst is None:
            dst = self._boxes[new] = _Mailbox()
        merged = bool(dst.msgs)
        for mid, item in src.msgs.items():
            item.mailbox = new
            dst.msgs[mid] = item
            if not item.lease_until:
                heapq.heappush(dst.ready, mid)
            else:  # the entry under ``old`` goes stale
                heapq.heappush(self._lease_heap, (item.lease_until, new, mid))
                self._stale_leases += 1
        dst.size_bytes += src.size_bytes
        if merged:  # keep ``msgs`` in id (arrival) order: expire_mail relies on it
            dst.msgs = dict(sorted(dst.msgs.items()))

    def mailbox_names(self) -> Iterable[str]:
        """:meth:`~parrot_ipc.store.base.Store.mailbox_names`: a list of the names that have at
        least one queued message."""
        return list(self._boxes)

    def queued(self, mailbox: str) -> list[StoredMessage]:
        """:meth:`~parrot_ipc.store.base.Store.queued`: a list, O(n) for n messages in it."""
        box = self._boxes.get(mailbox)
        return list(box.msgs.values()) if box else []

    def expire_mail(self, mailbox: str, before_id: str) -> list[str]:
        """:meth:`~parrot_ipc.store.base.Store.expire_mail`: delete the messages of ``mailbox``
        whose id sorts before ``before_id``, leased or not, through :meth:`ack`.

        Ids sort by arrival, and ``msgs`` is kept in id order, so this stops at the first
        younger message: cost O(k) for k expired. Returns the deleted ids.
        """
        box = self._boxes.get(mailbox)
        if box is None:
            return []
        old: list[str] = []
        for mid in box.msgs:
            if mid >= before_id:
                break
            old.append(mid)
        return self.ack(mailbox, old) if old else []

    # forwards ---------------------------------------------------------------
    def put_forward(self, old: str, new: str, until: float) -> None:
        """:meth:`~parrot_ipc.store.base.Store.put_forward`: ``until`` in seconds since the epoch; replaces any forward from ``old``."""
        self._forwards[old] = (new, until)

    def get_forward(self, name: str, now: float) -> str | None:
        """:meth:`~parrot_ipc.store.base.Store.get_forward`: an expired forward (``until`` <=
        ``now``, seconds since the epoch) reads as None and is left for :meth:`purge` to
        delete: a read never mutates, so a journaled store sees every deletion."""
        fwd = self._forwards.get(name)
        if fwd is None or fwd[1] <= now:
            return None
        return fwd[0]

    def forward(self, name: str) -> tuple[str, float] | None:
        """The stored forward from ``name`` as ``(new name, until)``, expired or not, or None."""
        return self._forwards.get(name)

    def delete_forward(self, name: str) -> None:
        """:meth:`~parrot_ipc.store.base.Store.delete_forward`: nothing happens if there is none."""
        self._forwards.pop(name, None)

    # idempotency ------------------------------------------------------------
    def get_idempotent(self, sender: str, key: str, now: float) -> SendResult | None:
        """:meth:`~parrot_ipc.store.base.Store.get_idempotent`: None once ``until`` <= ``now`` (seconds since the epoch)."""
        hit = self._idem.get((sender, key))
        if hit is None or hit[1] <= now:
            return None
        return hit[0]

    def put_idempotent(self, sender: str, key: str, result: SendResult, until: float) -> None:
        """:meth:`~parrot_ipc.store.base.Store.put_idempotent`: ``until`` in seconds since the epoch."""
        self._idem[(sender, key)] = (result, until)
        self._idem_order.append((until, sender, key))

    def purge(self, now: float) -> None:
        """:meth:`~parrot_ipc.store.base.Store.purge`: idempotency keys in expiry order (O(k)
        for k expired), then a scan of forwards and sessions. Expired sessions go through
        :meth:`delete_session`."""
        order = self._idem_order
        while order and order[0][0] <= now:
            _, sender, key = order.popleft()
            hit = self._idem.get((sender, key))
            if hit is not None and hit[1] <= now:
                del self._idem[(sender, key)]
        for name in [n for n, (_, until) in self._forwards.items() if until <= now]:
            del self._forwards[name]
        for s in [s for s in self._sessions.values() if not s.live(now)]:
            self.delete_session(s)
