"""Sessions and name owners read from SQLite, not held in memory (issue 14): a part of
:class:`parrot_ipc.store.sqlite.SqliteStore`.

A session is read by primary key (``token_hash``) or through the index
``sessions_by_instance``; a name's owner by primary key of ``names``. What memory holds:

- **Live sessions, one object each.** The core marks a session it ends (``revoked``) on the
  object, and every connection bound to it must see that: the store hands out one object per
  session while anything holds it (``WeakValueDictionary`` by token hash and by name), and
  keeps :data:`RECENT_SESSIONS` recently used ones, so that a send to a name whose holder is
  offline does not read its row each time.
- **What is not committed yet**: each write since the last commit, by key, with its journal op,
  dropped in the writer thread once that op is committed (as :mod:`parrot_ipc.store.idempotency`
  does; the maps' writes take a lock). A read looks there first, then in the table, so a
  record is always found in one of them.
- **Names known to have no session, and owners of names looked up** (at most
  :data:`NO_SESSION_NAMES` each), so mail to a name nobody holds, or a ``get_token``, costs no
  read or one read (owner and holder together); every write for a name updates them.

Times are seconds since the epoch.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, Generic, TypeVar

import msgspec

from .base import Session
from .ops import DeleteNameOwner, DeleteSession, Op, Purge, PutNameOwner, PutSession

#: Recently used sessions kept (strongly) besides the live ones.
RECENT_SESSIONS: Final = 1024
#: Names remembered as held by no session.
NO_SESSION_NAMES: Final = 65536

_SESSION_SQL: Final = ("SELECT token_hash, instance_id, uid, gid, pid, scopes, created_at, expires_at, "
                       "last_rename_at, bound_pid, bound_start_time FROM sessions WHERE token_hash = ?")
_ALL_SQL: Final = _SESSION_SQL.split(" WHERE ")[0]
#: One read answers both questions about a name: its owner, and the session holding it.
_NAME_SQL: Final = ("SELECT (SELECT uid FROM names WHERE instance_id = ?1), (SELECT token_hash FROM sessions "
                    "WHERE instance_id = ?1 LIMIT 1)")  # one session per name: ORDER BY is not needed

K = TypeVar("K")
V = TypeVar("V")


def _forget_committed(table: dict[K, tuple[Op, V]], done: set[int]) -> None:
    for key in [k for k, (op, _) in table.items() if id(op) in done]:
        del table[key]


class NameFilter:
    """A Bloom filter of names (https://en.wikipedia.org/wiki/Bloom_filter): ``name in f`` is
    False only for a name never added; a false "maybe" costs one read. Fixed size: 2**21 bits
    (256 KiB), 3 probes from the string's own ``hash()`` (salted per process, which is fine:
    the filter is filled at each open); about 1% false positives at 200,000 names, more beyond
    (reads, never wrong answers). Names are never removed (a freed name stays a "maybe")."""

    __slots__ = ("_bits",)
    _MASK: Final = (1 << 21) - 1

    def __init__(self) -> None:
        self._bits = bytearray(1 << 18)

    def add(self, name: str) -> None:
        """Add ``name``."""
        d, bits, m = hash(name), self._bits, self._MASK
        for p in (d & m, (d >> 21) & m, (d >> 42) & m):
            bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, name: object) -> bool:
        d, bits, m = hash(name), self._bits, self._MASK  # three probes, inline: this runs per lookup
        p, q, r = d & m, (d >> 21) & m, (d >> 42) & m
        return bool(bits[p >> 3] >> (p & 7) & bits[q >> 3] >> (q & 7) & bits[r >> 3] >> (r & 7) & 1)


class _Weak(Generic[K]):
    """Sessions by key, held weakly (``weakref.ref`` in a plain dict: cheaper to fill than a
    ``WeakValueDictionary``); dead entries go at each :meth:`sweep` (the purge, every
    ``PURGE_INTERVAL_S``)."""

    __slots__ = ("refs",)

    def __init__(self) -> None:
        #: The weak references by key (read directly on hot paths).
        self.refs: dict[K, weakref.ref[Session]] = {}

    def get(self, key: K) -> Session | None:
        r = self.refs.get(key)
        return None if r is None else r()

    def __setitem__(self, key: K, s: Session) -> None:
        self.refs[key] = weakref.ref(s)

    def pop(self, key: K) -> None:
        self.refs.pop(key, None)

    def values(self) -> list[Session]:
        return [s for r in list(self.refs.values()) if (s := r()) is not None]

    def sweep(self) -> None:
        self.refs = {k: r for k, r in self.refs.items() if r() is not None}


def _remember(cache: dict[str, V], key: str, value: V) -> None:
    """Set ``key`` in the bounded ``cache`` (at most :data:`NO_SESSION_NAMES` entries; the
    oldest insertion goes first: a dict keeps insertion order)."""
    cache[key] = value
    if len(cache) > NO_SESSION_NAMES:
        del cache[next(iter(cache))]


class DiskRecords:
    """Sessions and name owners of a durable store, read from SQLite (see the module docstring).

    The subclass (:class:`~parrot_ipc.store.sqlite.SqliteStore`) journals through
    :meth:`_journal` and calls :meth:`records_committed` after each commit.

    Args:
        read_db: the store's read-only connection (event loop only).
    """

    def __init__(self, read_db: sqlite3.Connection) -> None:
        self._rdb = read_db
        self._live: _Weak[bytes] = _Weak()
        self._by_name: _Weak[str] = _Weak()
        self._recent: OrderedDict[bytes, Session] = OrderedDict()
        self._unsaved: dict[bytes, tuple[Op, Session | None]] = {}  # token hash -> (op, session; None: deleted)
        self._unsaved_name: dict[str, tuple[Op, bytes | None]] = {}  # name -> (op, holder's token hash)
        self._unsaved_owner: dict[str, tuple[Op, int | None]] = {}  # name -> (op, owner UID)
        self._no_session: dict[str, None] = {}
        self._owners: dict[str, int | None] = {}  # owner by name, as last read or written
        self._lock = threading.Lock()  # records_committed() runs in the writer thread
        #: Every name a session or an owner row may have (filled at open, then by each write).
        self.names_seen = NameFilter()

    def _journal(self, op: Op) -> None:  # SqliteStore journals
        raise NotImplementedError

    def load_names(self, db: sqlite3.Connection) -> None:
        """Fill :attr:`names_seen` with every name of ``names`` and ``sessions`` (at open).

        Raises:
            sqlite3.Error: the read failed.
        """
        for (name,) in db.execute("SELECT instance_id FROM names UNION SELECT instance_id FROM sessions"):
            self.names_seen.add(str(name))

    def records_committed(self, ops: Iterable[Op]) -> None:
        """Forget the writes of ``ops``, just committed (writer thread, after ``COMMIT``); a key
        written again since (by a newer op) stays."""
        done = {id(op) for op in ops
                if isinstance(op, PutSession | DeleteSession | PutNameOwner | DeleteNameOwner | Purge)}
        if done:
            with self._lock:
                _forget_committed(self._unsaved, done)
                _forget_committed(self._unsaved_name, done)
                _forget_committed(self._unsaved_owner, done)

    # ------------------------------------------------------------------ sessions
    def _known(self, s: Session, recent: bool = True) -> Session:
        """Register ``s`` as the one object of its session (and, if ``recent``, recently used:
        kept even when nothing else holds it)."""
        self._live[s.token_hash] = s
        self._by_name[s.instance_id] = s
        if recent:
            self._recent[s.token_hash] = s
            self._recent.move_to_end(s.token_hash)
            if len(self._recent) > RECENT_SESSIONS:
                self._recent.popitem(last=False)
        return s

    def _write(self, s: Session | None, h: bytes, op: Op, names: dict[str, bytes | None]) -> None:
        with self._lock:
            self._unsaved[h] = (op, s)
            for name, holder in names.items():
                self._unsaved_name[name] = (op, holder)
                self.names_seen.add(name)
        for name in names:
            self._no_session.pop(name, None)
        self._journal(op)

    def put_session(self, session: Session) -> None:
        """:meth:`~parrot_ipc.store.base.Store.put_session`: journal
        :class:`~parrot_ipc.store.ops.PutSession`; ``session`` is the one object from now on."""
        self._known(session, recent=False)  # its connection holds it
        self._write(session, session.token_hash, PutSession.of(session), {session.instance_id: session.token_hash})

    def get_session(self, token_hash: bytes) -> Session | None:
        """:meth:`~parrot_ipc.store.base.Store.get_session`: not yet committed, else the live
        object, else one primary-key read.

        Raises:
            sqlite3.Error: the read failed.
        """
        hit = self._unsaved.get(token_hash)
        if hit is not None:
            return hit[1]
        s = self._live.get(token_hash)
        if s is not None:
            return s
        rows = self._rdb.execute(_SESSION_SQL, (token_hash,)).fetchall()
        if not rows:
            return None
        r = rows[0]
        scopes = frozenset(msgspec.json.decode(r[5], type=list[str]))
        return self._known(Session(bytes(r[0]), r[1], r[2], r[3], r[4], scopes, r[6], r[7], r[8],
                                   bound_pid=r[9], bound_start_time=r[10]))

    def session_of(self, instance_id: str) -> Session | None:
        """:meth:`~parrot_ipc.store.base.Store.session_of`: not yet committed, else a live
        object holding the name, else one index read (remembered when there is none).

        Raises:
            sqlite3.Error: the read failed.
        """
        hit = self._unsaved_name.get(instance_id)
        if hit is not None:
            return None if hit[1] is None else self.get_session(hit[1])
        ref = self._by_name.refs.get(instance_id)  # the hot path (every send): no method call
        s = None if ref is None else ref()
        if s is not None and s.instance_id == instance_id:
            mine = self._unsaved.get(s.token_hash)
            if mine is None or mine[1] is s:  # not deleted since (get_session(hash) is s)
                return s
        if instance_id in self._no_session:
            return None
        h = self._read_name(instance_id)
        s = None if h is None else self.get_session(h)
        if s is None or s.instance_id != instance_id:
            _remember(self._no_session, instance_id, None)  # no write for it is in flight: checked above
            return None
        return s

    def _read_name(self, name: str) -> bytes | None:
        """One read of ``name``'s owner (remembered) and holder: returns the holder's token hash.

        Raises:
            sqlite3.Error: the read failed.
        """
        # Checked before the read: a write committed after the check is in what the read sees,
        # so what is remembered is never older than the table (writes are dropped from the
        # in-flight maps only once committed).
        owner_in_flight = name in self._unsaved_owner
        if name not in self.names_seen:  # never written: no row has it, no read needed
            _remember(self._owners, name, None)
            return None
        uid, h = self._rdb.execute(_NAME_SQL, (name,)).fetchall()[0]
        if not owner_in_flight:
            _remember(self._owners, name, None if uid is None else int(uid))
        return None if h is None else bytes(h)

    def update_session(self, session: Session, previous_instance_id: str | None = None) -> None:
        """:meth:`~parrot_ipc.store.base.Store.update_session`: journal the whole row; after a
        rename ``previous_instance_id`` no longer maps to ``session``."""
        names: dict[str, bytes | None] = {session.instance_id: session.token_hash}
        if previous_instance_id not in (None, session.instance_id):  # a rename: the old name is free
            names[str(previous_instance_id)] = None
        self._known(session)
        self._write(session, session.token_hash, PutSession.of(session), names)

    def delete_session(self, session: Session) -> None:
        """:meth:`~parrot_ipc.store.base.Store.delete_session`: its name is freed only if it
        still maps to ``session``."""
        names: dict[str, bytes | None] = {}
        if self.session_of(session.instance_id) is session:
            names[session.instance_id] = None
        self._live.pop(session.token_hash)
        self._recent.pop(session.token_hash, None)
        if self._by_name.get(session.instance_id) is session:
            self._by_name.pop(session.instance_id)
        self._write(None, session.token_hash, DeleteSession(session.token_hash), names)

    def sessions(self) -> Iterable[Session]:
        """:meth:`~parrot_ipc.store.base.Store.sessions`: one per name held; reads every row
        (for ``list_sessions``, an admin call, not requests).

        Raises:
            sqlite3.Error: the read failed.
        """
        held: dict[str, Session] = {}
        for r in self._rdb.execute(_ALL_SQL):
            h = bytes(r[0])
            if h in self._unsaved:
                continue
            s = self._live.get(h)
            if s is None:
                scopes = frozenset(msgspec.json.decode(r[5], type=list[str]))
                s = Session(h, r[1], r[2], r[3], r[4], scopes, r[6], r[7], r[8], bound_pid=r[9], bound_start_time=r[10])
                self._live[h] = s
            held[s.instance_id] = s
        for _, u in list(self._unsaved.values()):
            if u is not None:
                held[u.instance_id] = u
        return [s for n, s in held.items() if self.session_of(n) is s]

    def forget_expired_sessions(self, now: float, purge: Op) -> None:
        """The journaled ``purge`` deletes the rows of sessions not live at ``now``: until it is
        committed, the ones in memory already read as gone (as after a restart)."""
        self._live.sweep()
        self._by_name.sweep()
        expired = [s for s in self._live.values() if not s.live(now)]
        expired += [s for _, s in list(self._unsaved.values()) if s is not None and not s.live(now)]
        with self._lock:
            for s in expired:
                self._unsaved[s.token_hash] = (purge, None)
                self._unsaved_name[s.instance_id] = (purge, None)  # not deleted: it holds its name
        for s in expired:  # _by_name maps only to sessions in _live (session_of's fast path)
            self._live.pop(s.token_hash)
            if self._by_name.get(s.instance_id) is s:
                self._by_name.pop(s.instance_id)
            self._recent.pop(s.token_hash, None)

    # ------------------------------------------------------------------ name owners
    def name_owner(self, instance_id: str) -> int | None:
        """:meth:`~parrot_ipc.store.base.Store.name_owner`: not yet committed, else one
        primary-key read.

        Raises:
            sqlite3.Error: the read failed.
        """
        hit = self._unsaved_owner.get(instance_id)
        if hit is not None:
            return hit[1]
        if instance_id in self._owners:
            return self._owners[instance_id]
        holder_in_flight = instance_id in self._unsaved_name
        if self._read_name(instance_id) is None and not holder_in_flight:
            _remember(self._no_session, instance_id, None)
        return self._owners.get(instance_id)

    def put_name_owner(self, instance_id: str, uid: int, now: float) -> None:
        """:meth:`~parrot_ipc.store.base.Store.put_name_owner`: journal
        :class:`~parrot_ipc.store.ops.PutNameOwner`."""
        op = PutNameOwner(instance_id, uid, now)
        self.names_seen.add(instance_id)
        with self._lock:
            self._unsaved_owner[instance_id] = (op, uid)
        _remember(self._owners, instance_id, uid)
        self._journal(op)

    def delete_name_owner(self, instance_id: str) -> None:
        """:meth:`~parrot_ipc.store.base.Store.delete_name_owner`: journal
        :class:`~parrot_ipc.store.ops.DeleteNameOwner` with the owner it frees (nothing when
        nobody owns the name)."""
        owner = self.name_owner(instance_id)
        if owner is None:
            return
        op = DeleteNameOwner(instance_id, owner)
        with self._lock:
            self._unsaved_owner[instance_id] = (op, None)
        _remember(self._owners, instance_id, None)
        self._journal(op)

    def name_owners(self) -> Iterable[tuple[str, int]]:
        """:meth:`~parrot_ipc.store.base.Store.name_owners`: every row (for the idle-name sweep).

        Raises:
            sqlite3.Error: the read failed.
        """
        owners = {str(n): int(u) for n, u in self._rdb.execute("SELECT instance_id, uid FROM names")}
        for n, (_, uid) in list(self._unsaved_owner.items()):
            if uid is None:
                owners.pop(n, None)
            else:
                owners[n] = uid
        return list(owners.items())
