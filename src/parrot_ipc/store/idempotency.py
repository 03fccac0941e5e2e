"""Idempotency keys read from SQLite, not held in memory (issue 14).

A durable broker used to keep every ``(sender, key)`` it had seen in the in-memory mirror for
``idempotency_ttl_s`` (24 h by default): about 1 KB of RSS per unique key. :class:`IdempotencyIndex`
keeps only the keys written and not yet committed (the journal ops still pending or in the
writer thread's batch); every other lookup is one primary-key read of the ``idempotency``
table (``PRIMARY KEY (sender, key)``: a b-tree lookup of a few microseconds, so it may run on
the event loop). The read uses the store's read-only connection, so it never waits on the writer thread's
transaction (WAL mode: readers do not block writers nor writers readers,
https://sqlite.org/wal.html).

Threads: :meth:`IdempotencyIndex.committed` runs in the writer thread, the rest on the event
loop; the map's writes take a lock (a dict ``get`` needs none under the GIL).
Ordering: :meth:`IdempotencyIndex.committed` drops a key from the uncommitted map only after
its ``COMMIT`` returned, and :meth:`IdempotencyIndex.get` looks in that map first and reads the
table second, so a key is always found in one of them. Times are seconds since the epoch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable

from ..core.protocol import SendResult
from .ops import Op, PutIdempotent

#: The lookup: the row of ``(sender, key)`` if it has not expired by ``now``.
LOOKUP_SQL = "SELECT id, recipient, status FROM idempotency WHERE sender = ? AND key = ? AND until > ?"


class IdempotencyIndex:
    """The idempotency keys of a :class:`~parrot_ipc.store.sqlite.SqliteStore`: uncommitted ones
    in a dict, committed ones in the ``idempotency`` table only.

    Args:
        read_db: the store's read-only connection for the event loop's lookups (the one
            :class:`~parrot_ipc.store.mailboxes.DiskMailboxes` reads pages with; its owner
            closes it).
    """

    def __init__(self, read_db: sqlite3.Connection) -> None:
        self._db = read_db
        self._uncommitted: dict[tuple[str, str], tuple[PutIdempotent, SendResult]] = {}
        # committed() runs in the writer thread; put() and purge() on the event loop.
        self._lock = threading.Lock()

    def get(self, sender: str, key: str, now: float) -> SendResult | None:
        """The result kept for ``(sender, key)`` whose ``until`` is after ``now``, or None: the
        uncommitted keys first, then one primary-key read.

        Raises:
            sqlite3.Error: the read failed.
        """
        hit = self._uncommitted.get((sender, key))
        if hit is not None:
            return hit[1] if hit[0].until > now else None
        # fetchall, not fetchone: the statement runs to its end, so no read transaction stays
        # open (it would pin an old WAL snapshot and hold back checkpoints).
        rows = self._db.execute(LOOKUP_SQL, (sender, key, now)).fetchall()
        if not rows:
            return None
        mid, to, status = rows[0]
        return SendResult(id=mid, to=to, status=status)

    def put(self, op: PutIdempotent, result: SendResult) -> None:
        """Remember ``op`` (journaled by the caller) and its ``result`` until :meth:`committed`
        sees it written."""
        with self._lock:
            self._uncommitted[(op.sender, op.key)] = (op, result)

    def committed(self, ops: Iterable[Op]) -> None:
        """Forget the keys of the :class:`~parrot_ipc.store.ops.PutIdempotent` among ``ops``,
        which were just committed (call it after ``COMMIT`` returned). A key put again since
        (a newer op object) stays."""
        unc = self._uncommitted
        with self._lock:
            for op in ops:
                hit = unc.get((op.sender, op.key)) if isinstance(op, PutIdempotent) else None
                if hit is not None and hit[0] is op:
                    del unc[(op.sender, op.key)]

    def purge(self, now: float) -> None:
        """Drop the uncommitted keys whose ``until`` <= ``now`` (the journaled
        :class:`~parrot_ipc.store.ops.Purge` deletes the table's)."""
        with self._lock:
            for k in [k for k, hit in self._uncommitted.items() if hit[0].until <= now]:
                del self._uncommitted[k]

    def uncommitted_count(self) -> int:
        """How many keys are held in memory (written, not yet committed)."""
        return len(self._uncommitted)
