"""Mailboxes whose messages live in SQLite, not in memory (issue 14): the message half of
:class:`parrot_ipc.store.sqlite.SqliteStore`.

What memory holds, per mailbox: its count and bytes, and the ids a live connection needs now:
messages not yet committed (their journal op holds them anyway), messages leased (a lease holds
an id and a deadline, never the message), messages whose lease ran out, and the few ids of the
last page read. Every other queued message is a row of the ``messages`` table only, found
through the ``messages_by_mailbox (mailbox, id, ...)`` index. Message bodies read or written
recently sit in a bounded cache (:class:`~parrot_ipc.store.bodies.BodyCache`, bound in bytes).

The disk range. Each mailbox knows one id range ``(after, hi]``: every row labelled with its
name whose id is in the range, at least ``floor``, and neither in memory nor deleted-but-not-
yet-committed, is a ready message of that mailbox. ``receive`` serves ids in order: the
smallest ready id held in memory when it sorts at or before ``after``, else a page read from
the range (one index range scan, ``LIMIT`` the count asked; ``after`` moves past it), else the
newest messages held in memory. Once a message is committed (the writer thread says so,
:meth:`DiskMailboxes.committed`), a ready one leaves memory (``hi`` moves past it) unless it is
among its mailbox's newest ``KEEP_IDS``. A lookup a response waits for is one index range or
primary-key read (microseconds, issue 14: it may run on the event loop).

Renames. ``move_mailbox`` merges the counts and the ids in memory at once; the moved range is
held aside until the ``MoveMailbox`` op is committed (then every row carries the new label),
and joins the range then. Until that commit, a few milliseconds, those messages wait.

Threads: :meth:`DiskMailboxes.committed` runs in the writer thread and only appends to a deque;
the event loop takes its batches in (:meth:`DiskMailboxes._drain`). Seconds since the epoch; bytes.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable

from ..core.protocol import Message
from .base import StoredMessage
from .bodies import BodyCache
from .boxes import (
    KEEP_IDS,
    LEASE_COMPACT_MIN,
    LEASED,
    META_SQL,
    PAGE_MIN,
    PAGE_SQL,
    PENDING,
    READY,
    ROWS_SQL,
    Box,
    Entry,
    Loaded,
    compact_leases,
    disk_rows,
)
from .charges import Charges
from .ops import DeleteMessages, MoveMailbox, Op, PutMessage, QuarantineMessages, SetLease
from .schema import message_from_row


class DiskMailboxes:
    """The mailboxes of a durable store: counts and live ids in memory, messages in SQLite.

    Implements the mailbox methods of :class:`~parrot_ipc.store.base.Store`. The subclass
    (:class:`~parrot_ipc.store.sqlite.SqliteStore`) journals through :meth:`_journal`.

    Args:
        read_db: a connection for the event loop's reads (WAL mode: never blocked by the
            writer, https://sqlite.org/wal.html).
        cache_bytes: the bound of the message body cache, in bytes.

    Attributes:
        quarantined: ``(id, mailbox)`` of each row that failed its checksum when read
            (moved to the ``quarantine`` table, never delivered).
        on_quarantine: told ``(id, mailbox)`` of each such row as it happens (the daemon audits
            ``message_quarantined``), or None.
    """

    def __init__(self, read_db: sqlite3.Connection, cache_bytes: int) -> None:
        self._read = read_db
        self._boxes: dict[str, Box] = {}
        self._mem: dict[str, Entry] = {}
        self._gone: set[str] = set()  # deleted, delete not committed yet
        self._bodies = BodyCache(cache_bytes)
        self._charges = Charges()
        self._lease_heap: list[tuple[float, str]] = []
        self._stale_leases = 0
        self._pending_boxes: set[str] = set()
        self._committed_top = ""  # every PutMessage with an id <= this is committed
        self._done: deque[list[Op]] = deque()  # committed batches, from the writer thread
        self._moves: dict[int, str] = {}  # id(MoveMailbox op) -> the box it made
        self.quarantined: list[tuple[str, str]] = []
        self.on_quarantine: Callable[[str, str], None] | None = None

    def _journal(self, op: Op) -> None:  # SqliteStore journals
        raise NotImplementedError

    def adopt(self, loaded: Loaded) -> None:
        """Take the mailboxes, leases and charges a start read (:func:`~parrot_ipc.store.boxes.read_boxes`,
        maybe in a worker thread); call it on the event loop before any mailbox call."""
        self._boxes, self._mem, self._lease_heap = loaded.boxes, loaded.mem, loaded.lease_heap
        self._charges = loaded.charges

    def committed(self, ops: list[Op]) -> None:
        """Called by the writer thread after ``ops`` were committed: queue them for the event
        loop (a deque append, safe across threads)."""
        self._done.append(ops)

    def _drain(self) -> None:
        """Take in the batches committed since the last call: forget committed deletes, let
        committed ready messages leave memory, and open ranges moved by committed renames."""
        top, gone = self._committed_top, self._gone
        while self._done:
            for op in self._done.popleft():
                if type(op) is PutMessage:  # type(), not isinstance: this runs for every message
                    top = op.id if op.id > top else top
                    self._stored(op)
                elif type(op) is DeleteMessages:
                    gone.difference_update(op.ids)
                elif isinstance(op, QuarantineMessages):
                    gone.difference_update(op.text_ids())
                elif isinstance(op, MoveMailbox):
                    self._moved(op)
        if top != self._committed_top:
            self._committed_top = top
            for name in list(self._pending_boxes):
                self._spill(name)

    def _stored(self, op: PutMessage) -> None:
        """``op``'s message is committed: SQLite has its body; cache it if not sent yet."""
        if (e := self._mem.get(op.id)) is not None and (body := e.body) is not None:
            e.body = None
            if e.state == PENDING:
                self._bodies.put(op.id, body, op.size_bytes)

    def _spill(self, name: str) -> None:
        """Committed ready messages of ``name`` leave memory, but the newest ``KEEP_IDS``."""
        box = self._boxes.get(name)
        if box is None:
            self._pending_boxes.discard(name)
            return
        top, pending = self._committed_top, box.pending
        while len(pending) > KEEP_IDS and pending[0] <= top:
            mid = pending.popleft()
            e = self._mem.get(mid)
            if e is None or e.state != PENDING or e.box != name:
                continue
            del self._mem[mid]
            box.mem.discard(mid)
            if not box.disk():
                box.after = box.hi  # an empty range starts past every id already served
            box.hi = max(box.hi, mid)
            box.floor = min(box.floor, mid)
        if len(pending) <= KEEP_IDS:
            self._pending_boxes.discard(name)

    def _moved(self, op: MoveMailbox) -> None:
        """The rename ``op`` is committed: its box's waiting ranges join its disk range."""
        box = self._boxes.get(self._moves.pop(id(op), ""))
        if box is not None and box.moved_by is op:
            box.open_waiting()

    # ------------------------------------------------------------------ queue
    def enqueue(self, item: StoredMessage) -> None:
        """:meth:`~parrot_ipc.store.base.Store.enqueue`: held in memory until committed."""
        if self._done:  # the hottest call: no drain call when nothing was committed since
            self._drain()
        m = item.message
        box = self._boxes.get(item.mailbox)
        if box is None:
            box = self._boxes[item.mailbox] = Box(item.mailbox)
        box.count += 1
        box.size_bytes += item.size_bytes
        box.pending.append(m.id)
        box.mem.add(m.id)
        if len(box.pending) > KEEP_IDS:
            self._pending_boxes.add(item.mailbox)
        self._mem[m.id] = Entry(m.id, item.mailbox, item.size_bytes, item.payer, PENDING, body=m)
        self._charges.add(item.payer, item.size_bytes)
        self._journal(PutMessage.of(item))

    def mailbox_usage(self, mailbox: str) -> tuple[int, int]:
        """:meth:`~parrot_ipc.store.base.Store.mailbox_usage`: ``(count, bytes)``, O(1)."""
        return (box.count, box.size_bytes) if (box := self._boxes.get(mailbox)) else (0, 0)

    def sender_usage(self, uid: int) -> tuple[int, int]:
        """:meth:`~parrot_ipc.store.base.Store.sender_usage`: ``(count, bytes)``, O(1)."""
        return self._charges.usage(uid)

    def mailbox_names(self) -> Iterable[str]:
        """:meth:`~parrot_ipc.store.base.Store.mailbox_names`: a list."""
        return list(self._boxes)

    # ------------------------------------------------------------------ lease / ack
    def lease(self, mailbox: str, max_count: int, lease_until: float) -> list[Message]:
        """:meth:`~parrot_ipc.store.base.Store.lease`: oldest first; at most one index range
        read per page, and one primary-key read for bodies no longer cached."""
        self._drain()
        box = self._boxes.get(mailbox)
        if box is None:
            return []
        ids: list[str] = []
        out: list[Message] = []  # the bodies at hand, while every one is (the usual case)
        while len(ids) < max_count and (e := self._next_ready(box, max_count - len(ids))) is not None:
            e.state, e.until = LEASED, lease_until
            ids.append(mid := e.id)
            heapq.heappush(self._lease_heap, (lease_until, mid))
            if len(out) == len(ids) - 1 and (m := e.body or self._bodies.get(mid)) is not None:
                out.append(m)
        if len(out) < len(ids):
            out = self._messages(box, ids)
        if out:
            self._journal(SetLease(lease_until, tuple(m.id for m in out), mailbox))
        return out

    def _next_ready(self, box: Box, want: int) -> Entry | None:
        """The entry of the smallest ready id of ``box``, now held in memory, or None."""
        mem, name = self._mem, box.name
        while True:
            ready, disk = box.ready, box.after < box.hi
            if ready and (not disk or ready[0] <= box.after):
                e = mem.get(heapq.heappop(ready))
                if e is not None and e.state == READY and e.box == name:
                    return e
            elif disk:
                self._page_in(box, max(want, PAGE_MIN))
            elif box.pending:
                e = mem.get(box.pending.popleft())
                if e is not None and e.state == PENDING and e.box == name:
                    return e
            else:
                return None

    def _page_in(self, box: Box, limit: int) -> None:
        """Read the next ``limit`` ids of ``box``'s disk range into memory (ready; from the
        covering index, bodies are read when leased); ``after`` moves past them, or to ``hi``
        when the range is done. An id that is not UTF-8 any more is quarantined."""
        rows = self._read.execute(PAGE_SQL, (box.name, box.after, box.floor, box.hi, limit)).fetchall()
        box.after = bytes(rows[-1][0]).decode(errors="replace") if len(rows) == limit else box.hi
        for raw, size, payer in rows:
            try:
                mid = bytes(raw).decode()
            except UnicodeDecodeError:
                self._quarantine(box, raw, size, payer)
                continue
            if mid in self._mem or mid in self._gone:
                continue
            self._mem[mid] = Entry(mid, box.name, size, payer, READY)
            box.mem.add(mid)
            heapq.heappush(box.ready, mid)

    def _messages(self, box: Box, ids: list[str]) -> list[Message]:
        """The bodies of ``ids`` (leased in ``box``), in order: from memory, else one primary-key
        read; a row that fails its checksum is quarantined and left out."""
        found: dict[str, Message] = {}
        missing = []
        for mid in ids:
            e = self._mem.get(mid)
            m = e.body if e is not None and e.body is not None else self._bodies.get(mid)
            if m is None:
                missing.append(mid)
            else:
                found[mid] = m
        if missing:
            rows = self._read.execute(ROWS_SQL % ",".join("?" * len(missing)), missing).fetchall()
            for row in rows:
                item = message_from_row(*row[:10])
                if item is None:
                    self._quarantine(box, row[0], row[6], row[10])
                else:
                    found[item.message.id] = item.message
        return [found[mid] for mid in ids if mid in found]

    def _quarantine(self, box: Box, raw_id: bytes, size: int, payer: int | None) -> None:
        """Move a row that failed its checksum to ``quarantine`` (journaled), uncount it."""
        mid = bytes(raw_id).decode(errors="replace")
        self._forget(box, mid, size, payer)
        self._journal(QuarantineMessages((bytes(raw_id),)))
        self.quarantined.append((mid, box.name))
        if self.on_quarantine is not None:
            self.on_quarantine(mid, box.name)

    def _forget(self, box: Box, mid: str, size: int, payer: int | None) -> None:
        """Take message ``mid`` out of ``box``'s counts, the charges and memory."""
        e = self._mem.pop(mid, None)
        if e is not None and e.state == LEASED:
            self._stale_leases += 1
        box.mem.discard(mid)
        box.count -= 1
        box.size_bytes -= size
        if payer is not None:
            self._charges.remove(payer, size)
        self._gone.add(mid)
        self._bodies.pop(mid)
        if box.count <= 0:
            del self._boxes[box.name]
            self._pending_boxes.discard(box.name)

    def ack(self, mailbox: str, ids: Iterable[str]) -> list[str]:
        """:meth:`~parrot_ipc.store.base.Store.ack`: ids held in memory (leased, as a rule)
        at once; others by one primary-key read, if in ``mailbox``'s disk range."""
        self._drain()
        box = self._boxes.get(mailbox)
        if box is None:
            return []
        want = list(dict.fromkeys(ids))
        done: set[str] = set()
        disk = []
        mem = self._mem
        for mid in want:
            if (e := mem.get(mid)) is not None:
                if e.box == mailbox:
                    self._forget(box, mid, e.size, e.payer)
                    done.add(mid)
            elif mid not in self._gone:
                disk.append(mid)
        if disk and box.disk():
            self._ack_on_disk(box, disk, done)
        out = [mid for mid in want if mid in done]
        if out:
            self._journal(DeleteMessages(tuple(out)))
        if self._stale_leases >= LEASE_COMPACT_MIN:
            self._compact_leases()
        return out

    def _ack_on_disk(self, box: Box, ids: list[str], done: set[str]) -> None:
        """Delete those of ``ids`` (held nowhere in memory) that are rows of ``box``'s disk
        range: one primary-key read. Adds them to ``done``."""
        for mid, label, size, payer in self._read.execute(META_SQL % ",".join("?" * len(ids)), ids):
            if (label == box.name and box.after < mid <= box.hi and mid >= box.floor
                    and mid not in self._gone and box.name in self._boxes):
                self._forget(box, mid, size, payer)
                done.add(mid)

    def expire_mail(self, mailbox: str, before_id: str) -> list[str]:
        """:meth:`~parrot_ipc.store.base.Store.expire_mail`: ids in memory, then the disk
        range below ``before_id`` (one index range read; none when the range starts later)."""
        self._drain()
        box = self._boxes.get(mailbox)
        if box is None:
            return []
        old = sorted(mid for mid in box.mem if mid < before_id)
        if box.disk() and box.after < before_id:
            rows = self._read.execute(
                "SELECT id FROM messages WHERE mailbox = ? AND id > ? AND id >= ? AND id <= ? AND id < ?",
                (mailbox, box.after, box.floor, box.hi, before_id)).fetchall()
            old += [mid for (mid,) in rows if mid not in self._gone and mid not in self._mem]
        return self.ack(mailbox, old) if old else []

    def release_expired(self, now: float) -> list[tuple[str, str]]:
        """:meth:`~parrot_ipc.store.base.Store.release_expired`: O(k log n) for k leases run out."""
        heap, out = self._lease_heap, []
        while heap and heap[0][0] <= now:
            until, mid = heapq.heappop(heap)
            e = self._mem.get(mid)
            if e is None or e.state != LEASED or e.until != until:
                self._stale_leases = max(0, self._stale_leases - 1)
                continue
            e.state, e.until = READY, 0.0
            heapq.heappush(self._boxes[e.box].ready, mid)
            out.append((e.box, mid))
        if out:
            self._journal(SetLease(0.0, tuple(mid for _, mid in out)))
        return out

    def unlease(self, mailbox: str, ids: list[str], until: float) -> list[str]:
        """Make ``ids`` of ``mailbox`` ready again if still leased until ``until`` (their lease
        was never committed, issue 14). Returns those made ready."""
        done = []
        for mid in ids:
            e = self._mem.get(mid)
            if e is not None and e.box == mailbox and e.state == LEASED and e.until == until:
                e.state, e.until = READY, 0.0
                heapq.heappush(self._boxes[mailbox].ready, mid)
                done.append(mid)
        self._stale_leases += len(done)
        return done

    def next_lease_expiry(self) -> float | None:
        """:meth:`~parrot_ipc.store.base.Store.next_lease_expiry`: seconds, or None; O(1)."""
        return self._lease_heap[0][0] if self._lease_heap else None

    def _compact_leases(self) -> None:
        if 2 * self._stale_leases >= len(self._lease_heap):
            compact_leases(self._lease_heap, self._mem)
            self._stale_leases = 0

    # ------------------------------------------------------------------ rename
    def move_mailbox(self, old: str, new: str) -> None:
        """:meth:`~parrot_ipc.store.base.Store.move_mailbox`: counts and ids in memory move at
        once; ``old``'s disk range waits until the ``MoveMailbox`` op is committed."""
        self._drain()
        src = self._boxes.pop(old, None)
        if src is None:
            return
        self._pending_boxes.discard(old)
        dst = self._boxes.get(new)
        if dst is None:
            dst = self._boxes[new] = Box(new)
        op = MoveMailbox(old, new)
        for mid in src.mem:  # merge() needs the entries to name dst
            self._mem[mid].box = new
        dst.merge(src, self._mem)
        if dst.waiting:
            dst.moved_by = op
            self._moves[id(op)] = new
        self._pending_boxes.discard(new)
        self._journal(op)

    def queued(self, mailbox: str) -> list[StoredMessage]:
        """:meth:`~parrot_ipc.store.base.Store.queued`: every message of ``mailbox``, leases
        included, in id order. Reads the whole mailbox: for tests and tools, not requests."""
        self._drain()
        if (box := self._boxes.get(mailbox)) is None:
            return []
        out = {i.message.id: i for i in disk_rows(self._read, box) if i.message.id not in self._gone}
        for mid in box.mem:  # these win over their rows: leases and uncommitted state live here
            e = self._mem[mid]
            for m in self._messages(box, [mid]):
                out[mid] = StoredMessage(m, mailbox, e.size, e.until if e.state == LEASED else 0.0, e.payer)
        return [out[k] for k in sorted(out)]
