"""Journal ops: one small frozen record per kind of durable change, and THE table that says how
each kind is written to SQLite.

A journaled store (:class:`parrot_ipc.store.sqlite.SqliteStore`) turns each mutation into one
op, holding plain values copied at mutation time (never a live object the core may change
later). :func:`write` runs a batch of ops: each run of consecutive ops of one class is one
``executemany`` per statement of that class's entry in :data:`SQL`. Every op is idempotent
(``INSERT OR REPLACE``, ``DELETE``, ``UPDATE`` to a value), so a batch whose commit failed can
be written again.

Times are seconds since the Unix epoch; sizes are bytes. The tables are those of
:mod:`parrot_ipc.store.schema`. Numbered parameters (``?2``) are SQLite's
(https://sqlite.org/lang_expr.html#varparam). This module imports no I/O module, so
:mod:`parrot_ipc.store.base` can name :class:`Op` without pulling sqlite3 into the core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, groupby
from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec import UNSET
from msgspec.structs import astuple

from .rows import row_checksum

if TYPE_CHECKING:
    import sqlite3

    from ..core.protocol import SendResult
    from .base import Session, StoredMessage


class Op(msgspec.Struct, frozen=True, gc=False):
    """Base class of every journal op (frozen; msgspec Structs have ``__slots__``).

    Ops hold only strings, bytes, numbers and tuples of them, so they can never be part of a
    reference cycle: every op class says ``gc=False`` and is not tracked by the cyclic garbage
    collector (msgspec docs, "Disabling Garbage Collection"), which a journal of many small
    records does not need. Each subclass repeats ``frozen=True`` because type checkers
    (PEP 681) require it."""


class PutMessage(Op, frozen=True, gc=False):
    """Insert (or replace) a queued message, ready (``lease_until`` 0).

    ``data`` is the message's ``data`` column (:func:`encode_data`: its ``data`` object as JSON
    bytes, or None when it has none, or a JSON array when it carries a ``reply_to``);
    ``recipient`` is the name it was sent to (``Message.to``); ``size_bytes`` its counted size;
``checksum`` the row's (:func:`parrot_ipc.store.rows.row_checksum`, schema version 5);
    ``payer`` the UID charged for it (schema version 6), or None. ``lease_until`` is 0 as
    journaled; :func:`write` sets it when the same batch leases the message (a push).
    """

    id: str
    mailbox: str
    sender: str
    content: str
    data: bytes | None
    sent_at: str
    size_bytes: int
    recipient: str
    checksum: int
    payer: int | None = None
    lease_until: float = 0.0

    @classmethod
    def of(cls, item: StoredMessage) -> PutMessage:
        """The op that stores ``item`` (its ``data`` encoded to JSON now, and the row's
        checksum computed now: :func:`parrot_ipc.store.rows.row_checksum`)."""
        m = item.message
        data = encode_data(m.data, m.reply_to)
        return cls(m.id, item.mailbox, m.from_, m.content, data, m.sent_at, item.size_bytes, m.to,
                   row_checksum(m.id, m.from_, m.to, m.content, data, m.sent_at), item.payer)


def encode_data(data: Any, reply_to: Any) -> bytes | None:
    """The ``messages.data`` column for a message's ``data`` and ``reply_to`` (either UNSET).

    Without ``reply_to``: the ``data`` object as JSON, or None (as schema version 1 wrote it).
    With one: the JSON array ``[data or null, {"reply_to": ...}]``. ``data`` is always a JSON
    object (``docs/protocol.md``, send), so an array never collides with an older row, and
    ``reply_to`` needs no schema migration. :func:`decode_data` reads both forms back.
    """
    if reply_to is UNSET:
        return None if data is UNSET else msgspec.json.encode(data)
    return msgspec.json.encode([None if data is UNSET else data, {"reply_to": reply_to}])


def decode_data(blob: bytes | None) -> tuple[Any, Any]:
    """``(data, reply_to)`` of a ``messages.data`` column written by :func:`encode_data`
    (UNSET where absent). Raises msgspec.DecodeError if the column is not valid JSON."""
    if blob is None:
        return UNSET, UNSET
    value = msgspec.json.decode(blob)
    if not isinstance(value, list):
        return value, UNSET
    data, extra = value
    return (UNSET if data is None else data), extra.get("reply_to", UNSET)


class SetLease(Op, frozen=True, gc=False):
    """Lease the messages ``ids`` until ``until`` (seconds since the epoch; 0 = ready again), in
    the ``leases`` table;
    ``mailbox`` is the mailbox a lease (``until`` > 0) was taken in, so a failed commit can
    roll the lease back in memory (``""`` when releasing: not written to the database)."""

    until: float
    ids: tuple[str, ...]
    mailbox: str = ""


class DeleteMessages(Op, frozen=True, gc=False):
    """Delete the messages ``ids`` (acked or expired)."""

    ids: tuple[str, ...]


class QuarantineMessages(Op, frozen=True, gc=False):
    """Move the message rows ``ids`` (raw id bytes: a damaged id may not be UTF-8) into the
    ``quarantine`` table: they failed their checksum when read (issue 14)."""

    ids: tuple[bytes, ...]

    def text_ids(self) -> tuple[str, ...]:
        """The ids as text, bytes that are not UTF-8 shown as U+FFFD (as the store names them)."""
        return tuple(mid.decode(errors="replace") for mid in self.ids)


class MoveMailbox(Op, frozen=True, gc=False):
    """Move every message of mailbox ``old`` into mailbox ``new`` (a rename)."""

    old: str
    new: str


class PutSession(Op, frozen=True, gc=False):
    """Insert (or replace) a session row; ``scopes`` is a JSON list of names, sorted."""

    token_hash: bytes
    instance_id: str
    uid: int
    gid: int
    pid: int
    scopes: str
    created_at: float
    expires_at: float
    last_rename_at: float | None
    bound_pid: int | None
    bound_start_time: int | None

    @classmethod
    def of(cls, s: Session) -> PutSession:
        """The op that stores ``s`` as it is now (``revoked`` is never stored)."""
        scopes = msgspec.json.encode(sorted(s.scopes)).decode()
        return cls(s.token_hash, s.instance_id, s.uid, s.gid, s.pid, scopes, s.created_at,
                   s.expires_at, s.last_rename_at, s.bound_pid, s.bound_start_time)


class DeleteSession(Op, frozen=True, gc=False):
    """Delete the session whose token hashes (SHA-256) to ``token_hash``."""

    token_hash: bytes


class TouchInstances(Op, frozen=True, gc=False):
    """Set the last-seen time of instances: ``seen`` is ``((instance_id, seconds), ...)``."""

    seen: tuple[tuple[str, float], ...]


class DeleteInstance(Op, frozen=True, gc=False):
    """Delete the last-seen record of ``instance_id``."""

    instance_id: str


class PutForward(Op, frozen=True, gc=False):
    """Forward mail for ``old`` to ``new`` until ``until`` (seconds since the epoch)."""

    old: str
    new: str
    until: float


class DeleteForward(Op, frozen=True, gc=False):
    """Delete the forward from ``old``."""

    old: str


class PutIdempotent(Op, frozen=True, gc=False):
    """Keep the result (``id``, ``recipient``, ``status``) of ``sender``'s ``send`` with
    idempotency ``key`` until ``until`` (seconds since the epoch)."""

    sender: str
    key: str
    id: str
    recipient: str
    status: str
    until: float

    @classmethod
    def of(cls, sender: str, key: str, result: SendResult, until: float) -> PutIdempotent:
        """The op that keeps ``result`` for ``(sender, key)`` until ``until``."""
        return cls(sender, key, result.id, result.to, result.status, until)


class PutNameOwner(Op, frozen=True, gc=False):
    """Record that ``uid`` owns the name ``instance_id`` since ``claimed_at`` (seconds)."""

    instance_id: str
    uid: int
    claimed_at: float


class DeleteNameOwner(Op, frozen=True, gc=False):
    """Free the name ``instance_id`` from ``uid``, its owner when the op was made. The delete
    matches both, so a replayed or reordered op can never free a claim made since by another
    UID."""

    instance_id: str
    uid: int

class Purge(Op, frozen=True, gc=False):
    """Delete the sessions, forwards and idempotency keys that expired by ``now`` (seconds).
    Uses the ``*_by_until`` / ``sessions_by_expiry`` indexes, never a table scan."""

    now: float


def roll_back_lease(op: SetLease, unlease: Callable[[str, list[str], float], list[str]],
                    keep_lease: Callable[[str], bool] | None) -> Op:
    """The op that replaces lease ``op`` (``until`` > 0) after its commit failed (issue 14).

    ``unlease(mailbox, ids, until)`` makes the ids ready again in memory and returns those it
    freed (:meth:`parrot_ipc.store.memory.MemoryStore.unlease`); every id of ``op`` goes back
    but those for which ``keep_lease(id)`` is True, whose lease the returned op keeps. The
    freed ones are 0 in the database already: their lease was never committed.
    """
    kept = tuple(mid for mid in op.ids if keep_lease(mid)) if keep_lease else ()
    freed = unlease(op.mailbox, [mid for mid in op.ids if mid not in kept], op.until)
    return SetLease(op.until, kept, op.mailbox) if kept else SetLease(0.0, tuple(freed))


Rows = Callable[[Any], Iterable[Sequence[object]]]
"""How to get one op's parameter rows: called with an op of the entry's class."""


def fields(op: Op) -> tuple[tuple[Any, ...]]:
    """One parameter row: the op's fields in declaration order."""
    return (astuple(op),)


def _lease_rows(op: SetLease) -> Iterator[tuple[float, str]]:
    return ((op.until, mid) for mid in op.ids)


def _raw_id_rows(op: QuarantineMessages) -> Iterator[tuple[bytes]]:
    return ((mid,) for mid in op.ids)


def _id_rows(op: DeleteMessages) -> Iterator[tuple[str]]:
    return ((mid,) for mid in op.ids)


def _seen_rows(op: TouchInstances) -> tuple[tuple[str, float], ...]:
    return op.seen


@dataclass(frozen=True, slots=True)
class Write:
    """One SQL statement of an op's entry, and how to get its parameter rows from an op."""

    sql: str
    rows: Rows = fields


#: Copies one message row (its raw id) into ``quarantine``, stamped now (seconds since the epoch).
QUARANTINE_SQL: Final = (
    "INSERT OR REPLACE INTO quarantine (id, mailbox, sender, content, data, sent_at, recipient, checksum, "
    "quarantined_at) SELECT CAST(id AS BLOB), CAST(mailbox AS BLOB), CAST(sender AS BLOB), CAST(content AS BLOB), "
    "data, CAST(sent_at AS BLOB), CAST(recipient AS BLOB), checksum, (julianday('now') - 2440587.5) * 86400.0 "
    "FROM messages WHERE id = CAST(? AS TEXT)")

#: THE op -> SQL table. Each class maps to its statements; :func:`write` runs each statement
#: once per run of consecutive ops of that class (``executemany`` over every op's rows). The
#: statements of one entry touch different tables, so running them statement by statement
#: keeps the order that matters.
SQL: Final[Mapping[type[Op], tuple[Write, ...]]] = {
    PutMessage: (Write("INSERT OR REPLACE INTO messages (id, mailbox, sender, content, data, sent_at, "
                       "size_bytes, recipient, checksum, payer, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),),
    QuarantineMessages: (Write(QUARANTINE_SQL, _raw_id_rows),
                         Write("DELETE FROM messages WHERE id = CAST(? AS TEXT)", _raw_id_rows)),
    # A lease is a row of ``leases`` (schema version 6: the message row is not rewritten); a
    # release sets it to 0, and the row goes with its message. One statement, so the order of
    # the ops in a run holds.
    SetLease: (Write("UPDATE messages SET lease_until = ? WHERE id = ?", _lease_rows),),
    DeleteMessages: (Write("DELETE FROM messages WHERE id = ?", _id_rows),),
    MoveMailbox: (Write("UPDATE messages SET mailbox = ?2 WHERE mailbox = ?1"),),
    PutSession: (Write("INSERT OR REPLACE INTO sessions (token_hash, instance_id, uid, gid, pid, scopes, "
                       "created_at, expires_at, last_rename_at, bound_pid, bound_start_time) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),),
    DeleteSession: (Write("DELETE FROM sessions WHERE token_hash = ?"),),
    TouchInstances: (Write("INSERT OR REPLACE INTO instances (instance_id, last_seen) VALUES (?, ?)",
                           _seen_rows),),
    DeleteInstance: (Write("DELETE FROM instances WHERE instance_id = ?"),),
    PutNameOwner: (Write("INSERT OR REPLACE INTO names (instance_id, uid, claimed_at) VALUES (?, ?, ?)"),),
    DeleteNameOwner: (Write("DELETE FROM names WHERE instance_id = ? AND uid = ?"),),
    PutForward: (Write("INSERT OR REPLACE INTO forwards (old, new, until) VALUES (?, ?, ?)"),),
    DeleteForward: (Write("DELETE FROM forwards WHERE old = ?"),),
    PutIdempotent: (Write("INSERT OR REPLACE INTO idempotency (sender, key, id, recipient, status, until) "
                          "VALUES (?, ?, ?, ?, ?, ?)"),),
    Purge: (Write("DELETE FROM idempotency WHERE until <= ?"),
            Write("DELETE FROM forwards WHERE until <= ?"),
            Write("DELETE FROM sessions WHERE expires_at <= ?")),
}

#: Written only by a batch whose deletes remove the highest message id stored (issue 14: a send
#: writes no ``meta`` page): the highest id issued, so ids stay unique across restarts even when
#: every message has been acked (ids sort by arrival; at load the highest id is the larger of
#: this row and the ``messages``, ``quarantine`` and ``idempotency`` tables').
SET_LAST_ID: Final = "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_id', ?)"
#: The highest message id stored: the end of the primary key's b-tree, O(log n).
MAX_ID: Final = "SELECT max(id) FROM messages"


def fold_leases(ops: Sequence[Op]) -> Sequence[Op]:
    """``ops`` with each lease of a message inserted by the same batch folded into its insert
    (issue 14: a pushed message is inserted and leased before its commit; one ``UPDATE`` per
    message less, measured at 2.5 us each by ``benchmarks/store_cycle.py``). The last lease of an
    id in the batch wins, as running them in order would. ``ops`` itself is not changed (a
    failed batch is requeued as it was)."""
    new: set[str] = set()
    fold: dict[str, float] = {}
    for op in ops:
        if type(op) is PutMessage:
            new.add(op.id)
        elif type(op) is SetLease:
            fold.update((mid, op.until) for mid in op.ids if mid in new)
    if not fold:
        return ops
    out: list[Op] = []
    for op in ops:
        if type(op) is PutMessage and op.id in fold:
            out.append(msgspec.structs.replace(op, lease_until=fold[op.id]))
        elif type(op) is SetLease:
            if rest := tuple(mid for mid in op.ids if mid not in fold):
                out.append(SetLease(op.until, rest, op.mailbox))
        else:
            out.append(op)
    return out


def write(db: sqlite3.Connection, ops: Sequence[Op]) -> None:
    """Run ``ops`` in order on ``db``, inside the caller's transaction (no BEGIN or COMMIT).

    Leases of messages the batch inserts are folded into the inserts first (:func:`fold_leases`).
    Each run of consecutive ops of one class costs one ``executemany`` per statement of its
    :data:`SQL` entry. A batch that deletes messages also reads :data:`MAX_ID` before its
    first delete and after its last op; if the highest id it saw or stored is gone,
    :data:`SET_LAST_ID` keeps it. A batch without deletes leaves ``meta`` alone.

    Raises:
        sqlite3.Error: a statement failed (the caller rolls back).
        KeyError: an op class with no :data:`SQL` entry (a bug).
    """
    top = ""  # the highest id seen in the table or stored by this batch, once it deletes
    deleting = False
    for kind, group in groupby(fold_leases(ops), type):
        run = list(group)
        if kind is DeleteMessages and not deleting:
            deleting = True
            top = max(top, db.execute(MAX_ID).fetchone()[0] or "")
        for w in SQL[kind]:
            db.executemany(w.sql, chain.from_iterable(map(w.rows, run)))
        last = run[-1]
        if isinstance(last, PutMessage):
            top = max(top, last.id)
    if deleting and top > (db.execute(MAX_ID).fetchone()[0] or ""):
        db.execute(SET_LAST_ID, (top,))
