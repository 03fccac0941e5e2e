"""The durable store: SQLite (standard library) behind an in-memory mirror, with a write journal.

Reads never touch the database. :class:`SqliteStore` *is* a :class:`~parrot_ipc.core.store.MemoryStore`
(the mirror), loaded from the database at start, so ``receive`` costs what it costs in memory:
O(k log n) for k messages whatever the depth. Every mutation of the mirror also appends a
journal op (a small tuple) and raises ``written_seq``. The trio shell's committer takes the
pending ops (:meth:`SqliteStore.take_pending`), writes them in one transaction in a worker
thread (:meth:`SqliteStore.apply_ops`), then sets ``durable_seq``; no response that saw a
mutation is sent before that (``docs/durability.md``).

On disk (``--state-dir``): ``parrot.db`` (0600, WAL mode, schema version in
``PRAGMA user_version``) and ``broker.lock`` (an ``flock(2)`` held for the broker's life, so a
second broker on the same state refuses to start). The directory is 0700.

This module does file I/O, so it lives outside the sans-I/O core.

Sources: SQLite's documentation of WAL mode (https://www.sqlite.org/wal.html) and of
``PRAGMA synchronous`` / ``journal_mode`` / ``user_version`` / ``busy_timeout``
(https://www.sqlite.org/pragma.html); ``flock(2)``; ``docs/durability.md`` for what each
durability setting promises.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

import msgspec
from msgspec import UNSET

from ..core.protocol import Message, SendResult
from ..errors import StartupError
from . import MemoryStore, Session, StoredMessage

log = logging.getLogger("parrot_ipc.store")

DB_NAME: Final = "parrot.db"
LOCK_NAME: Final = "broker.lock"
SYSTEM_STATE_DIR: Final = "/var/lib/parrot-mcp"

#: One journal op: a tag, then the values to write (captured at mutation time, never live objects).
Op = tuple[Any, ...]

# Schema migrations: MIGRATIONS[i] takes a database from version i to version i + 1.
_V1: Final = """
CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,      -- SHA-256 of the token (the token itself is never stored)
    instance_id TEXT NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, pid INTEGER NOT NULL,
    scopes TEXT NOT NULL,             -- JSON list
    created_at REAL NOT NULL, expires_at REAL NOT NULL,
    last_rename_at REAL
) WITHOUT ROWID;
CREATE TABLE instances (instance_id TEXT PRIMARY KEY, last_seen REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE messages (
    id TEXT PRIMARY KEY,              -- arrival-sortable (core/timefmt.py)
    mailbox TEXT NOT NULL,
    sender TEXT NOT NULL,
    content TEXT NOT NULL,
    data BLOB,                        -- JSON object, or NULL
    sent_at TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX messages_by_mailbox ON messages (mailbox, id);
CREATE TABLE forwards (old TEXT PRIMARY KEY, new TEXT NOT NULL, until REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE idempotency (
    sender TEXT NOT NULL, key TEXT NOT NULL,
    id TEXT NOT NULL, recipient TEXT NOT NULL, status TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (sender, key)
) WITHOUT ROWID;
"""
# Version 2: purges by expiry use indexes (never a table scan); the meta table keeps the
# highest message id issued, so ids stay unique across restarts even when every message is acked;
# and a message keeps its own ``to`` after a rename moves it (NULL in rows from version 1: the
# mailbox it is in).
_V2: Final = """
ALTER TABLE messages ADD COLUMN recipient TEXT;
CREATE INDEX idempotency_by_until ON idempotency (until);
CREATE INDEX forwards_by_until ON forwards (until);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
# Version 3: process-bound sessions (config ``bind = "process"``) keep the pid and start time
# of the one process their token works from (NULL for a UID-bound session).
_V3: Final = """
ALTER TABLE sessions ADD COLUMN bound_pid INTEGER;
ALTER TABLE sessions ADD COLUMN bound_start_time INTEGER;
"""
MIGRATIONS: Final[tuple[str, ...]] = (_V1, _V2, _V3)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def default_state_dir(euid: int | None = None, env: Mapping[str, str] | None = None) -> str:
    """The state directory when ``--state-dir`` is not given.

    ``/var/lib/parrot-mcp`` for root; else ``$XDG_STATE_HOME/parrot-ipc``, falling back to
    ``~/.local/state/parrot-ipc``.
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return SYSTEM_STATE_DIR
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "parrot-ipc")


def _refuse(msg: str) -> StartupError:
    return StartupError(f"refusing to start: {msg}")


def _ensure_state_dir(path: str, euid: int) -> None:
    """Create ``path`` (0700, parents as needed) or check it: a real directory of ours, 0700."""
    try:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(f"cannot create state directory {path}: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or stat.S_IMODE(st.st_mode) != 0o700:
        kind = "symlink" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode) else "file"
        raise _refuse(f"state directory {path} must be a directory owned by uid {euid} with mode 0700; "
                      f"found a {kind} owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}")


def _lock(state_dir: str) -> int:
    path = os.path.join(state_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _refuse(f"cannot open lock file {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise _refuse(f"state database {os.path.join(state_dir, DB_NAME)} is in use by another broker "
                      f"({path} is locked)") from None
    return fd


def _ensure_db_file(path: str, euid: int) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(f"cannot create state database {path}: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != euid or stat.S_IMODE(st.st_mode) & 0o077:
        raise _refuse(f"state database {path} must be a regular file owned by uid {euid} with mode 0600; "
                      f"found uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}")
    if not os.access(path, os.R_OK | os.W_OK):
        raise _refuse(f"state database {path} is not writable")


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` to :data:`SCHEMA_VERSION`, one transaction per step. Returns the version found.

    Raises sqlite3.Error, or ValueError for a database newer than this broker.
    """
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise ValueError(f"schema version {found} is newer than this broker's ({SCHEMA_VERSION})")
    for version in range(found, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[version].split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    return found


#: Commits between WAL checkpoints (autocheckpoint is off; see :meth:`SqliteStore.checkpoint`).
CHECKPOINT_EVERY_COMMITS = 256


class SqliteStore(MemoryStore):
    """A durable :class:`~parrot_ipc.core.store.Store`: the memory mirror plus an SQLite journal.

    Open one with :meth:`open`. Reads are served by the mirror. Mutations append ops
    (``written_seq`` counts them); :meth:`take_pending` hands them over, :meth:`apply_ops`
    writes a batch in one transaction (one writer thread only), and the caller then sets
    ``durable_seq`` to the seq it took. :meth:`close` writes what is left and closes.

    ``last_seen`` updates are coalesced: they ride along with the next batch instead of
    raising ``written_seq`` on every request.
    """

    def __init__(self, db: sqlite3.Connection, path: str, lock_fd: int | None) -> None:
        super().__init__()
        self.path = path
        self._db = db
        self._lock_fd = lock_fd
        self._closed = False
        self._pending: list[Op] = []
        self._dirty_seen: dict[str, float] = {}
        self.written_seq = 0
        self.durable_seq = 0
        #: The highest message id found in the database at open (seed for the id generator).
        self.max_id: str | None = None
        self._commits_since_checkpoint = 0

    # ------------------------------------------------------------------ open / close
    @classmethod
    def open(cls, state_dir: str, *, durability: Literal["normal", "fsync"] = "normal",
             clock: Callable[[], float] = time.time, euid: int | None = None) -> SqliteStore:
        """Open (creating if needed) the store in ``state_dir`` and load it into the mirror.

        Creates the directory 0700 and ``parrot.db`` 0600, takes ``broker.lock``, sets WAL
        mode and ``synchronous`` (NORMAL, or FULL for ``durability="fsync"``), migrates the
        schema, drops expired sessions/forwards/idempotency keys, and loads the rest.

        Raises:
            StartupError: one line with the path and the cause: the directory or file is
                unsafe or not writable, another broker holds the lock, or the database is
                corrupt or from a newer version.
        """
        euid = os.geteuid() if euid is None else euid
        _ensure_state_dir(state_dir, euid)
        lock_fd = _lock(state_dir)
        path = os.path.join(state_dir, DB_NAME)
        db: sqlite3.Connection | None = None
        try:
            _ensure_db_file(path, euid)
            old_umask = os.umask(0o077)  # the -wal and -shm files too
            try:
                db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA busy_timeout = 0")
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise _refuse(f"state database {path}: cannot use WAL mode (got {mode})")
                db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'fsync' else 'NORMAL'}")
                # No checkpoint inside a commit: small commits may run on the event loop, and a
                # checkpoint fsyncs the database. The shell calls checkpoint() in its worker
                # thread when checkpoint_due() says so (https://sqlite.org/wal.html#ckpt).
                db.execute("PRAGMA wal_autocheckpoint = 0")
                migrate(db)
                db.execute("BEGIN IMMEDIATE")  # proves the file is writable now
                _purge_sql(db, clock())
                db.execute("COMMIT")
            finally:
                os.umask(old_umask)
            store = cls(db, path, lock_fd)
            store._load()
            return store
        except StartupError:
            _close_quietly(db, lock_fd)
            raise
        except sqlite3.DatabaseError as exc:
            _close_quietly(db, lock_fd)
            what = "is corrupt or not a database" if "not a database" in str(exc) or "malformed" in str(exc) \
                else "cannot be used"
            raise _refuse(f"state database {path} {what}: {exc}") from None
        except (ValueError, OSError, msgspec.MsgspecError) as exc:  # newer schema, bad rows, I/O
            _close_quietly(db, lock_fd)
            raise _refuse(f"state database {path}: {exc}") from None

    def close(self) -> None:
        """Write the pending ops (and coalesced ``last_seen``), checkpoint, close, unlock."""
        if self._closed:
            return
        self._closed = True
        try:
            ops, seq = self.take_pending()
            if ops:
                self.apply_ops(ops)
                self.durable_seq = seq
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            _close_quietly(self._db, self._lock_fd)
            self._lock_fd = None

    def _load(self) -> None:
        db = self._db
        for row in db.execute("SELECT token_hash, instance_id, uid, gid, pid, scopes, created_at, "
                              "expires_at, last_rename_at, bound_pid, bound_start_time "
                              "FROM sessions ORDER BY created_at"):
            scopes = frozenset(msgspec.json.decode(row[5], type=list[str]))
            MemoryStore.put_session(self, Session(bytes(row[0]), row[1], row[2], row[3], row[4], scopes,
                                                  row[6], row[7], row[8], bound_pid=row[9],
                                                  bound_start_time=row[10]))
        for name, seen in db.execute("SELECT instance_id, last_seen FROM instances"):
            MemoryStore.touch_instance(self, name, seen)
        max_id = None
        for mid, box, sender, content, data, sent_at, size, to, until in db.execute(
                "SELECT id, mailbox, sender, content, data, sent_at, size_bytes, recipient, lease_until "
                "FROM messages ORDER BY id"):
            msg = Message(id=mid, from_=sender, to=to or box, content=content,
                          data=UNSET if data is None else msgspec.json.decode(data), sent_at=sent_at)
            self.restore(StoredMessage(msg, box, size, until))
            max_id = mid
        for old, new, until in db.execute("SELECT old, new, until FROM forwards"):
            MemoryStore.put_forward(self, old, new, until)
        for sender, key, mid, to, status, until in db.execute(
                "SELECT sender, key, id, recipient, status, until FROM idempotency ORDER BY until"):
            MemoryStore.put_idempotent(self, sender, key, SendResult(id=mid, to=to, status=status), until)
            max_id = max(max_id or "", mid)
        row = db.execute("SELECT value FROM meta WHERE key = 'last_id'").fetchone()
        if row is not None:
            max_id = max(max_id or "", row[0])
        self.max_id = max_id or None

    # ------------------------------------------------------------------ journal
    def _op(self, op: Op) -> None:
        self._pending.append(op)
        self.written_seq += 1

    def take_pending(self) -> tuple[list[Op], int]:
        """Hand over every pending op (plus coalesced ``last_seen``) and the seq they reach.

        Returns ``(ops, seq)``: once :meth:`apply_ops` has committed ``ops``, the store is
        durable up to ``seq`` (a count of mutations since open).
        """
        ops, self._pending = self._pending, []
        if self._dirty_seen:
            ops.append(("seen", list(self._dirty_seen.items())))
            self._dirty_seen = {}
        return ops, self.written_seq

    def requeue(self, ops: list[Op]) -> None:
        """Put back ops whose commit failed, ahead of newer ones, to be retried (all are idempotent)."""
        self._pending[:0] = ops

    def apply_ops(self, ops: list[Op]) -> None:
        """Write ``ops`` in one transaction and commit. Runs in the single writer thread.

        Raises sqlite3.Error (the transaction is rolled back; the caller may :meth:`requeue`).
        """
        db = self._db
        last_id: str | None = None
        db.execute("BEGIN")
        try:
            i, n = 0, len(ops)
            while i < n:
                op = ops[i]
                tag = op[0]
                i += 1
                if tag == "msg":  # a run of inserts: one executemany
                    j = i
                    while j < n and ops[j][0] == "msg":
                        j += 1
                    db.executemany(_INSERT_MSG, [o[1:] for o in ops[i - 1:j]])
                    last_id = ops[j - 1][1]
                    i = j
                elif tag == "lease":
                    db.executemany("UPDATE messages SET lease_until = ? WHERE id = ?",
                                   [(op[1], mid) for mid in op[2]])
                elif tag == "del":
                    db.executemany("DELETE FROM messages WHERE id = ?", [(mid,) for mid in op[1]])
                elif tag == "idem":
                    db.execute("INSERT OR REPLACE INTO idempotency (sender, key, id, recipient, status, until) "
                               "VALUES (?, ?, ?, ?, ?, ?)", op[1:])
                elif tag == "session":
                    db.execute("INSERT OR REPLACE INTO sessions (token_hash, instance_id, uid, gid, pid, scopes, "
                               "created_at, expires_at, last_rename_at, bound_pid, bound_start_time) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", op[1:])
                elif tag == "session_del":
                    db.execute("DELETE FROM sessions WHERE token_hash = ?", op[1:])
                elif tag == "seen":
                    db.executemany("INSERT OR REPLACE INTO instances (instance_id, last_seen) VALUES (?, ?)", op[1])
                elif tag == "instance_del":
                    db.execute("DELETE FROM instances WHERE instance_id = ?", op[1:])
                elif tag == "move":
                    db.execute("UPDATE messages SET mailbox = ? WHERE mailbox = ?", (op[2], op[1]))
                elif tag == "fwd":
                    db.execute("INSERT OR REPLACE INTO forwards (old, new, until) VALUES (?, ?, ?)", op[1:])
                elif tag == "fwd_del":
                    db.execute("DELETE FROM forwards WHERE old = ?", op[1:])
                elif tag == "purge":
                    _purge_sql(db, op[1])
                else:  # pragma: no cover - a bug
                    raise ValueError(f"unknown journal op {tag!r}")
            if last_id is not None:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_id', ?)", (last_id,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._commits_since_checkpoint += 1

    def checkpoint_due(self) -> bool:
        """True once :data:`CHECKPOINT_EVERY_COMMITS` commits have gone into the WAL since the
        last :meth:`checkpoint` (a few pages each: about SQLite's default 1,000-page trigger)."""
        return self._commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS

    def checkpoint(self) -> None:
        """Copy the WAL into the database (``PRAGMA wal_checkpoint(PASSIVE)``; fsyncs under both
        durabilities). Run it in the writer thread, never on the event loop.

        Raises sqlite3.Error (the WAL is kept; the next try comes after as many commits again).
        """
        self._commits_since_checkpoint = 0
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    # ------------------------------------------------------------------ mutations (mirror + op)
    def put_session(self, session: Session) -> None:
        super().put_session(session)
        self._op(_session_op(session))

    def update_session(self, session: Session, previous_instance_id: str | None = None) -> None:
        super().update_session(session, previous_instance_id)
        self._op(_session_op(session))

    def delete_session(self, session: Session) -> None:
        super().delete_session(session)
        self._op(("session_del", session.token_hash))

    def touch_instance(self, instance_id: str, now: float) -> None:
        super().touch_instance(instance_id, now)
        self._dirty_seen[instance_id] = now

    def rename_instance(self, old: str, new: str, now: float) -> None:
        super().rename_instance(old, new, now)
        self._dirty_seen.pop(old, None)
        self._op(("instance_del", old))
        self._op(("seen", [(new, now)]))

    def enqueue(self, item: StoredMessage) -> None:
        super().enqueue(item)
        m = item.message
        data = None if m.data is UNSET else msgspec.json.encode(m.data)
        self._op(("msg", m.id, item.mailbox, m.from_, m.content, data, m.sent_at, item.size_bytes, m.to))

    def lease(self, mailbox: str, max_count: int, lease_until: float) -> list[Message]:
        out = super().lease(mailbox, max_count, lease_until)
        if out:
            self._op(("lease", lease_until, [m.id for m in out]))
        return out

    def ack(self, mailbox: str, ids: Iterable[str]) -> list[str]:
        done = super().ack(mailbox, ids)
        if done:
            self._op(("del", done))
        return done

    def release_expired(self, now: float) -> list[StoredMessage]:
        out = super().release_expired(now)
        if out:
            self._op(("lease", 0.0, [item.message.id for item in out]))
        return out

    def move_mailbox(self, old: str, new: str) -> None:
        super().move_mailbox(old, new)
        self._op(("move", old, new))

    def put_forward(self, old: str, new: str, until: float) -> None:
        super().put_forward(old, new, until)
        self._op(("fwd", old, new, until))

    def delete_forward(self, name: str) -> None:
        if name in self._forwards:
            super().delete_forward(name)
            self._op(("fwd_del", name))

    def put_idempotent(self, sender: str, key: str, result: SendResult, until: float) -> None:
        super().put_idempotent(sender, key, result, until)
        self._op(("idem", sender, key, result.id, result.to, result.status, until))

    def purge(self, now: float) -> None:
        super().purge(now)  # expired sessions go through delete_session (ops of their own)
        self._op(("purge", now))


_INSERT_MSG: Final = ("INSERT OR REPLACE INTO messages (id, mailbox, sender, content, data, sent_at, "
                      "size_bytes, recipient, lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)")


def _session_op(s: Session) -> Op:
    return ("session", s.token_hash, s.instance_id, s.uid, s.gid, s.pid,
            msgspec.json.encode(sorted(s.scopes)).decode(), s.created_at, s.expires_at, s.last_rename_at,
            s.bound_pid, s.bound_start_time)


def _purge_sql(db: sqlite3.Connection, now: float) -> None:
    db.execute("DELETE FROM idempotency WHERE until <= ?", (now,))
    db.execute("DELETE FROM forwards WHERE until <= ?", (now,))
    db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))


def _close_quietly(db: sqlite3.Connection | None, lock_fd: int | None) -> None:
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    if lock_fd is not None:
        with contextlib.suppress(OSError):
            os.close(lock_fd)
