"""The durable store: SQLite (standard library) as the source of truth for messages, with a
write journal.

Messages live in the ``messages`` table: the store *is* a
:class:`~parrot_ipc.store.mailboxes.DiskMailboxes`, which holds each mailbox's counts and the
ids a live connection needs, reads pages of a mailbox through an index, and caches bodies
within ``store_cache_bytes`` (issue 14). Idempotency keys are read from their table
(:mod:`.idempotency`). Sessions, name owners, last-seen times and forwards are few and small:
they are served from a :class:`~parrot_ipc.store.memory.MemoryStore` (the mirror), loaded at
start. Every mutation appends one journal op (:mod:`parrot_ipc.store.ops`),
raising ``written_seq``. The trio shell's committer takes the pending ops
(:meth:`SqliteStore.take_pending`) and writes them in one transaction in a worker thread
(:meth:`SqliteStore.apply_ops`); no response that saw a mutation is sent before that
(``docs/durability.md``).

On disk (``--state-dir``): ``parrot.db`` (0600, WAL mode, schema version in
``PRAGMA user_version``: :mod:`parrot_ipc.store.schema`) and ``broker.lock`` (an ``flock(2)``
held for the broker's life, so a second broker on the same state refuses to start). The
directory is 0700. All three are opened through :func:`parrot_ipc.os.files.open_checked`.

This module does file I/O, so it lives outside the sans-I/O core, and
:mod:`parrot_ipc.store` does not import it.

Sources: SQLite's documentation of WAL mode (https://sqlite.org/wal.html) and of
``PRAGMA synchronous`` / ``journal_mode`` / ``wal_autocheckpoint`` / ``wal_checkpoint`` /
``user_version`` / ``busy_timeout`` (https://sqlite.org/pragma.html); ``flock(2)``;
``docs/durability.md`` for what each durability setting promises.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Literal

from ..core.protocol import SendResult
from .base import Session
from .boxes import read_boxes
from .idempotency import IdempotencyIndex
from .mailboxes import DiskMailboxes
from .memory import MemoryStore
from .ops import (
    DeleteForward,
    DeleteInstance,
    DeleteNameOwner,
    DeleteSession,
    Op,
    Purge,
    PutForward,
    PutIdempotent,
    PutNameOwner,
    PutSession,
    SetLease,
    TouchInstances,
    roll_back_lease,
    write,
)
from .schema import MIGRATIONS, SCHEMA_VERSION, connect, load, migrate, startup_error
from .statedir import (
    DB_NAME,
    LOCK_NAME,
    SYSTEM_STATE_DIR,
    close_quietly,
    default_state_dir,
    ensure_db_file,
    ensure_state_dir,
    lock_state,
)

__all__ = ["CHECKPOINT_EVERY_COMMITS", "DB_NAME", "LOCK_NAME", "MIGRATIONS", "SCHEMA_VERSION",
           "SYSTEM_STATE_DIR", "SqliteStore", "default_state_dir", "migrate"]

#: The default bound of the message body cache, in bytes (config ``store_cache_bytes``).
DEFAULT_CACHE_BYTES = 8 * 1024 * 1024
#: Commits between WAL checkpoints (autocheckpoint is off; see :meth:`SqliteStore.checkpoint`).
CHECKPOINT_EVERY_COMMITS = 256
#: Seconds a stored ``last_seen`` may lag the mirror's: an instance's row is rewritten only once
#: it is this much older (issue 14: a page less per commit of a busy sender). :meth:`SqliteStore.close`
#: writes the exact values.
LAST_SEEN_LAG_S = 1.0


class SqliteStore(DiskMailboxes):
    """A durable :class:`~parrot_ipc.store.base.Store` and
    :class:`~parrot_ipc.store.base.Journaled`: a memory mirror plus an SQLite journal.

    Open one with :meth:`open`. Reads are served by the mirror. Each mutation changes the
    mirror and appends one op (``written_seq`` counts them); :meth:`take_pending` hands them
    over, and :meth:`apply_ops` writes a batch in one transaction (one writer thread only).
    :meth:`close` writes what is left and closes. Not thread-safe apart from that split: the
    event loop mutates, the writer thread applies ops it was handed.

    ``last_seen`` updates are coalesced: they ride along with the next batch instead of
    raising ``written_seq`` on every request.

    Attributes:
        path: the database file.
        written_seq: mutations since open (the seq :meth:`take_pending` reports).
        max_id: the highest message id found in the database at open (seed for the id
            generator), or None for a new database.
        quarantined: ``(id, mailbox)`` of each message row that failed its checksum at open
            and was moved to the ``quarantine`` table (never delivered; issue 14). The daemon
            audits each as ``message_quarantined``.
    """

    def __init__(self, db: sqlite3.Connection, path: str, lock_fd: int | None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        read = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        read.execute("PRAGMA query_only = 1")
        super().__init__(read, cache_bytes)
        self.path = path
        self._db = db
        self._lock_fd = lock_fd
        self._closed = False
        self._mirror = MemoryStore()
        self._pending: list[Op] = []
        self._dirty_seen: dict[str, float] = {}
        self._stored_seen: dict[str, float] = {}  # last_seen as last journaled, per instance
        self.written_seq = 0
        self.max_id: str | None = None
        self._commits_since_checkpoint = 0
        self._idem = IdempotencyIndex(read)  # keys live in SQLite, not in the mirror

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, state_dir: str, *, durability: Literal["normal", "fsync"] = "normal",
             clock: Callable[[], float] = time.time, euid: int | None = None,
             cache_bytes: int = DEFAULT_CACHE_BYTES, defer_mail: bool = False) -> SqliteStore:
        """Open (creating if needed) the store in ``state_dir``: load sessions, names and
        forwards into the mirror, and each mailbox's counts (never a message body).
        With ``defer_mail`` the mailboxes are left for :meth:`open_mail` (the daemon runs it in
        a worker thread while it already answers ``ping`` and ``get_token``, issue 14); no
        mailbox method may be called before. ``quick_check`` always runs here, so a corrupt
        file is refused before anything is served.

        Creates the directory 0700 and ``parrot.db`` 0600 (both must be owned by ``euid``,
        default the effective UID), takes ``broker.lock``, sets WAL mode and ``synchronous``
        (NORMAL, or FULL for ``durability="fsync"``; https://sqlite.org/pragma.html#pragma_synchronous),
        migrates the schema, drops sessions/forwards/idempotency keys expired by ``clock()``
        (seconds since the epoch), and loads the rest. ``cache_bytes`` bounds the message body
        cache (bytes). Message rows are checked when read (:mod:`parrot_ipc.store.mailboxes`).

        Raises:
            StartupError: one line, ``refusing to start: ...``, with the path and the cause:
                the directory or file is unsafe or not writable, another broker holds the lock,
                or the database is corrupt or from a newer version.
        """
        euid = os.geteuid() if euid is None else euid
        ensure_state_dir(state_dir, euid)
        lock_fd = lock_state(state_dir, euid)
        path = os.path.join(state_dir, DB_NAME)
        db: sqlite3.Connection | None = None
        store: SqliteStore | None = None
        try:
            ensure_db_file(path, euid)
            old_umask = os.umask(0o077)  # the -wal and -shm files too
            try:
                db = connect(path, durability, clock())
            finally:
                os.umask(old_umask)
            store = cls(db, path, lock_fd, cache_bytes)
            store.max_id = load(db, store._mirror)
            if not defer_mail:
                store.adopt(read_boxes(db, clock()))
            return store
        except BaseException as exc:
            if store is not None:
                store._read.close()
            close_quietly(db, lock_fd)
            err = startup_error(path, exc)
            if err is exc:
                raise
            raise err from None

    def open_mail(self, now: float) -> Callable[[], None]:
        """The deferred half of :meth:`open` (``defer_mail=True``): the mailboxes' counts and
        running leases at ``now`` (seconds since the epoch), read from the covering index on a
        connection of its own. Blocks: run it in a worker thread. Returns the function that
        adopts them (:meth:`~parrot_ipc.store.mailboxes.DiskMailboxes.adopt`); call that on
        the event loop.

        Raises:
            StartupError: one line: a row this broker cannot read (as :meth:`open` would have
                refused).
        """
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            loaded = read_boxes(db, now)
        except BaseException as exc:
            err = startup_error(self.path, exc)
            if err is exc:
                raise
            raise err from None
        finally:
            db.close()
        return lambda: self.adopt(loaded)

    def close(self) -> None:
        """Write the pending ops (and coalesced ``last_seen``), checkpoint (TRUNCATE), close the
        database and release the lock. A second call does nothing.

        Raises:
            sqlite3.Error: the last write failed (the database and lock are closed anyway).
        """
        if self._closed:
            return
        self._closed = True
        for name in self._stored_seen:  # the exact last_seen of every instance touched
            seen = self._mirror.last_seen(name)
            if seen is not None and seen != self._stored_seen[name]:
                self._dirty_seen[name] = seen
        try:
            ops, _ = self.take_pending()
            if ops:
                self.apply_ops(ops)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._read.close()
            close_quietly(self._db, self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ journal
    def _journal(self, op: Op) -> None:
        self._pending.append(op)
        self.written_seq += 1

    def take_pending(self) -> tuple[list[Op], int]:
        """Hand over every pending op (plus coalesced ``last_seen``) and the seq they reach.

        Returns ``(ops, seq)``: once :meth:`apply_ops` has committed ``ops``, the store is
        durable up to ``seq`` (a count of mutations since open).
        """
        self._drain()  # take in what was committed since: keeps the hand-over short (mailboxes.py)
        ops, self._pending = self._pending, []
        if self._dirty_seen:
            ops.append(TouchInstances(tuple(self._dirty_seen.items())))
            self._dirty_seen = {}
        return ops, self.written_seq

    def requeue(self, ops: list[Op], keep_lease: Callable[[str], bool] | None = None) -> None:
        """Put back ops whose commit failed, ahead of newer ones, to be retried (all are idempotent).

        A lease taken in the failed batch does not survive it (issue 14): the messages are ready
        again in the mirror at once and the op becomes a :class:`~parrot_ipc.store.ops.SetLease`
        to 0, except the ids for which ``keep_lease(id)`` is True (pushes still waiting for a
        commit to be sent: their lease stands and is retried with them).
        """
        self._pending[:0] = [roll_back_lease(op, self.unlease, keep_lease)
                             if isinstance(op, SetLease) and op.until > 0 else op for op in ops]

    def apply_ops(self, ops: list[Op]) -> None:
        """Write ``ops`` in one transaction and commit (:func:`parrot_ipc.store.ops.write`:
        one ``executemany`` per run of same-class ops). Runs in the single writer thread.

        Raises:
            sqlite3.Error: the transaction is rolled back; the caller may :meth:`requeue`.
        """
        db = self._db
        db.execute("BEGIN")
        try:
            write(db, ops)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._idem.committed(ops)  # after COMMIT: see parrot_ipc.store.idempotency
        self.committed(ops)  # after COMMIT: see parrot_ipc.store.mailboxes
        self._commits_since_checkpoint += 1

    def checkpoint_due(self) -> bool:
        """True once :data:`CHECKPOINT_EVERY_COMMITS` commits have gone into the WAL since the
        last :meth:`checkpoint` (a few pages each: about SQLite's default 1,000-page trigger,
        https://sqlite.org/wal.html#ckpt)."""
        return self._commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS

    def checkpoint(self) -> None:
        """Copy the WAL into the database (``PRAGMA wal_checkpoint(PASSIVE)``; fsyncs under both
        durabilities). Run it in the writer thread, never on the event loop.

        Raises:
            sqlite3.Error: the WAL is kept; the next try comes after as many commits again.
        """
        self._commits_since_checkpoint = 0
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    # ------------------------------------------------------------------ sessions
    def put_session(self, session: Session) -> None:
        """Mirror, then journal :class:`~parrot_ipc.store.ops.PutSession`."""
        self._mirror.put_session(session)
        self._journal(PutSession.of(session))

    def get_session(self, token_hash: bytes) -> Session | None:
        """Read from the mirror (:meth:`MemoryStore.get_session`)."""
        return self._mirror.get_session(token_hash)

    def session_of(self, instance_id: str) -> Session | None:
        """Read from the mirror (:meth:`MemoryStore.session_of`)."""
        return self._mirror.session_of(instance_id)

    def update_session(self, session: Session, previous_instance_id: str | None = None) -> None:
        """Mirror, then journal :class:`~parrot_ipc.store.ops.PutSession` (the whole row)."""
        self._mirror.update_session(session, previous_instance_id)
        self._journal(PutSession.of(session))

    def delete_session(self, session: Session) -> None:
        """Mirror, then journal :class:`~parrot_ipc.store.ops.DeleteSession`."""
        self._mirror.delete_session(session)
        self._journal(DeleteSession(session.token_hash))

    def sessions(self) -> Iterable[Session]:
        """Read from the mirror (:meth:`MemoryStore.sessions`)."""
        return self._mirror.sessions()

    # ------------------------------------------------------------------ instances
    def touch_instance(self, instance_id: str, now: float) -> None:
        """Mirror; the row is written with the next batch (coalesced, no seq of its own), and
        only if the stored value is :data:`LAST_SEEN_LAG_S` or more older (else at close)."""
        self._mirror.touch_instance(instance_id, now)
        if now - self._stored_seen.get(instance_id, float("-inf")) >= LAST_SEEN_LAG_S:
            self._dirty_seen[instance_id] = now
            self._stored_seen[instance_id] = now

    def last_seen(self, instance_id: str) -> float | None:
        """Read from the mirror (:meth:`MemoryStore.last_seen`): seconds since the epoch."""
        return self._mirror.last_seen(instance_id)

    def instance_ids(self) -> Iterable[str]:
        """Read from the mirror (:meth:`MemoryStore.instance_ids`)."""
        return self._mirror.instance_ids()

    def rename_instance(self, old: str, new: str, now: float) -> None:
        """Mirror, then journal :class:`~parrot_ipc.store.ops.DeleteInstance` and
        :class:`~parrot_ipc.store.ops.TouchInstances` (coalesced updates of either name drop)."""
        self._mirror.rename_instance(old, new, now)
        self._dirty_seen.pop(old, None)
        self._dirty_seen.pop(new, None)
        self._stored_seen.pop(old, None)
        self._stored_seen[new] = now
        self._journal(DeleteInstance(old))
        self._journal(TouchInstances(((new, now),)))

    # ------------------------------------------------------------------ name owners
    def name_owner(self, instance_id: str) -> int | None:
        """Read from the mirror (:meth:`MemoryStore.name_owner`)."""
        return self._mirror.name_owner(instance_id)

    def put_name_owner(self, instance_id: str, uid: int, now: float) -> None:
        """Mirror, then journal :class:`~parrot_ipc.store.ops.PutNameOwner`."""
        self._mirror.put_name_owner(instance_id, uid, now)
        self._journal(PutNameOwner(instance_id, uid, now))

    def delete_name_owner(self, instance_id: str) -> None:
        """Mirror, then journal :class:`~parrot_ipc.store.ops.DeleteNameOwner` (with the owner
        it frees; nothing is journaled when nobody owns the name)."""
        owner = self._mirror.name_owner(instance_id)
        if owner is None:
            return
        self._mirror.delete_name_owner(instance_id)
        self._journal(DeleteNameOwner(instance_id, owner))

    def name_owners(self) -> Iterable[tuple[str, int]]:
        """Read from the mirror (:meth:`MemoryStore.name_owners`)."""
        return self._mirror.name_owners()

    # ------------------------------------------------------------------ forwards
    def put_forward(self, old: str, new: str, until: float) -> None:
        """Mirror, then journal :class:`~parrot_ipc.store.ops.PutForward`."""
        self._mirror.put_forward(old, new, until)
        self._journal(PutForward(old, new, until))

    def get_forward(self, name: str, now: float) -> str | None:
        """Read from the mirror (:meth:`MemoryStore.get_forward`); changes nothing, even when
        the forward has expired (:meth:`purge` deletes it, journaled)."""
        return self._mirror.get_forward(name, now)

    def delete_forward(self, name: str) -> None:
        """If a forward from ``name`` is stored: mirror, then journal
        :class:`~parrot_ipc.store.ops.DeleteForward` (else nothing, and no seq)."""
        if self._mirror.forward(name) is not None:
            self._mirror.delete_forward(name)
            self._journal(DeleteForward(name))

    # ------------------------------------------------------------------ idempotency
    def get_idempotent(self, sender: str, key: str, now: float) -> SendResult | None:
        """Not from the mirror: :meth:`~parrot_ipc.store.idempotency.IdempotencyIndex.get`."""
        return self._idem.get(sender, key, now)

    def put_idempotent(self, sender: str, key: str, result: SendResult, until: float) -> None:
        """Journal :class:`~parrot_ipc.store.ops.PutIdempotent`, kept in memory only until committed."""
        op = PutIdempotent.of(sender, key, result, until)
        self._idem.put(op, result)
        self._journal(op)

    def purge(self, now: float) -> None:
        """Mirror, then journal :class:`~parrot_ipc.store.ops.Purge`, which deletes the same
        rows by the same rule: ``until <= now`` / ``expires_at <= now`` (revoked sessions
        were deleted, journaled, when they were revoked)."""
        self._mirror.purge(now)
        self._idem.purge(now)
        self._journal(Purge(now))

