"""What :mod:`parrot_ipc.store.mailboxes` holds in memory per mailbox and per live id, and the
SQL it reads pages with (issue 14). Ids are 18 lowercase hex digits (``core/timefmt.py``) and
compare as strings; times are seconds since the epoch; sizes are bytes.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .charges import Charges
from .schema import MESSAGE_COLUMNS, message_from_row

if TYPE_CHECKING:
    from ..core.protocol import Message
    from .base import StoredMessage
    from .ops import MoveMailbox

#: An id above every message id (ids are 18 lowercase hex digits): the floor of a mailbox
#: with no committed row yet.
TOP: Final = "~"
#: Rows read at least per page (a page brings ids and bodies into memory).
PAGE_MIN: Final = 16
#: Stale lease-heap entries tolerated before the heap is rebuilt (as in MemoryStore).
LEASE_COMPACT_MIN: Final = 1024

#: Ready ids a mailbox keeps in memory after their commit (the newest; older ones leave): a
#: short backlog is served without a page read, and memory stays bounded per mailbox.
KEEP_IDS: Final = 128
#: Entry states: ready in the heap, queued and not yet committed, leased.
READY, PENDING, LEASED = 0, 1, 2

#: A page of a mailbox's disk range: ids (raw bytes), sizes and payers only, from the covering
#: index ``messages_by_mailbox`` (no table access); bodies are read when leased (:data:`ROWS_SQL`).
PAGE_SQL: Final = ("SELECT CAST(id AS BLOB), size_bytes, payer FROM messages WHERE mailbox = ? AND id > ? "
                   "AND id >= ? AND id <= ? ORDER BY id LIMIT ?")
#: Every row of a mailbox's disk range, bodies included (``queued``: tests and tools).
RANGE_SQL: Final = (f"SELECT {MESSAGE_COLUMNS}, payer FROM messages WHERE mailbox = ? AND id > ? AND id >= ? "
                    "AND id <= ? ORDER BY id")
ROWS_SQL: Final = f"SELECT {MESSAGE_COLUMNS}, payer FROM messages WHERE id IN (%s)"
META_SQL: Final = "SELECT id, mailbox, size_bytes, payer FROM messages WHERE id IN (%s)"


class Entry:
    """A message id held in memory (``id``): its mailbox, size (bytes), payer (UID or None), state
    (:data:`READY`, :data:`PENDING` or :data:`LEASED`), lease deadline (0 unless leased), and
    its body while its ``send`` is not committed (None after: it is in SQLite then)."""

    __slots__ = ("body", "box", "id", "payer", "size", "state", "until")

    def __init__(self, mid: str, box: str, size: int, payer: int | None, state: int, until: float = 0.0,
                 body: Message | None = None) -> None:
        self.id, self.box, self.size, self.payer, self.state, self.until = mid, box, size, payer, state, until
        self.body = body


@dataclass(slots=True)
class Box:
    """One mailbox: counts, ready ids in memory (a heap), ids not yet committed (in id order),
    its disk range ``(after, hi]`` with ``floor``, ranges moved in and waiting for their commit,
    and the set of its ids held in memory."""

    name: str
    count: int = 0
    size_bytes: int = 0
    ready: list[str] = field(default_factory=list)
    pending: deque[str] = field(default_factory=deque)
    after: str = ""
    hi: str = ""
    floor: str = TOP
    waiting: list[tuple[str, str, str]] = field(default_factory=list)  # (after, hi, floor)
    moved_by: MoveMailbox | None = None
    mem: set[str] = field(default_factory=set)

    def disk(self) -> bool:
        """True while the disk range may still hold ready rows."""
        return self.after < self.hi

    def open_waiting(self) -> None:
        """The rename that moved the waiting ranges in is committed (every row now carries
        this box's name): they join the disk range."""
        for after, hi, floor in self.waiting:
            self.after = min(self.after, after) if self.disk() else after
            self.hi = max(self.hi, hi)
            self.floor = min(self.floor, floor)
        self.waiting.clear()
        self.moved_by = None

    def merge(self, src: Box, mem: dict[str, Entry]) -> None:
        """Take in every message of ``src`` (renamed into this box; ``mem`` entries already
        name this box): counts and ids in memory at once. Ids not yet committed, of both, join
        the ready heap (in id order there; they stay in memory until leased: a rename is rare
        and the commit window short). ``src``'s disk range waits in :attr:`waiting`."""
        self.mem |= src.mem
        self.count += src.count
        self.size_bytes += src.size_bytes
        self.ready.extend(src.ready)
        for mid in (*src.pending, *self.pending):
            e = mem.get(mid)
            if e is not None and e.state == PENDING and e.box == self.name:
                e.state = READY
                self.ready.append(mid)
        self.pending.clear()
        heapq.heapify(self.ready)
        self.waiting += src.waiting
        if src.disk():
            self.waiting.append((src.after, src.hi, src.floor))


@dataclass(slots=True)
class Loaded:
    """What a start reads of the messages (:func:`read_boxes`): every mailbox, the leases still
    running (ids in ``mem``, ``lease_heap`` of ``(until, id)``) and the charges per UID."""

    boxes: dict[str, Box] = field(default_factory=dict)
    mem: dict[str, Entry] = field(default_factory=dict)
    lease_heap: list[tuple[float, str]] = field(default_factory=list)
    charges: Charges = field(default_factory=Charges)


def read_boxes(db: sqlite3.Connection, now: float) -> Loaded:
    """Read every mailbox (counts, bytes, disk range: every row) from the covering index
    ``messages_by_mailbox``, the leases still running at ``now`` (a second scan of the same
    index) and the charges per paying UID; no message body is read. Safe in a worker thread
    (it touches nothing but ``db`` and what it returns).

    Raises:
        sqlite3.Error: a read failed.
        TypeError: a row's size or payer is not an integer (a damaged row ``quick_check`` let
            through; the caller refuses to start in one line).
    """
    out = Loaded()
    boxes, mem = out.boxes, out.mem
    for name, payer, count, size, top, bad in db.execute(
            "SELECT mailbox, payer, count(*), sum(size_bytes), max(id), sum(typeof(size_bytes) != 'integer' "
            "OR typeof(payer) NOT IN ('integer', 'null')) FROM messages GROUP BY mailbox, payer"):
        if bad or not isinstance(name, str):
            raise TypeError(f"{bad} row(s) of mailbox {name!r} have a size or payer that is not an integer")
        box = boxes.get(name) or boxes.setdefault(name, Box(name, floor=""))
        box.count += count
        box.size_bytes += size
        box.hi = max(box.hi, top)
        out.charges.add(payer, size, count)
    for mid, name, size, payer, until in db.execute(
            "SELECT id, mailbox, size_bytes, payer, lease_until FROM messages INDEXED BY messages_by_mailbox "
            "WHERE lease_until > ?", (now,)):
        mem[mid] = Entry(mid, name, size, payer, LEASED, until)
        boxes[name].mem.add(mid)
        out.lease_heap.append((until, mid))
    heapq.heapify(out.lease_heap)
    return out


def compact_leases(heap: list[tuple[float, str]], mem: dict[str, Entry]) -> None:
    """Rebuild the lease heap ``(until, id)`` without its stale entries (acked, released or
    re-leased since): O(n), run once stale entries are over half of it."""
    heap[:] = [(u, mid) for u, mid in heap if (e := mem.get(mid)) is not None and e.state == LEASED and e.until == u]
    heapq.heapify(heap)


def disk_rows(read: sqlite3.Connection, box: Box) -> Iterator[StoredMessage]:
    """Every row of ``box``'s disk range that passes its check, with its payer (``queued``:
    tests and tools). Rows also held in memory are included; the caller prefers memory's."""
    if not box.disk():
        return
    for row in read.execute(RANGE_SQL, (box.name, box.after, box.floor, box.hi)):
        item = message_from_row(*row[:10])
        if item is not None:
            item.payer = row[10]
            yield item
