"""The durable store's database: its DDL, one migration per version (:func:`migrate`), how a
connection is made ready (:func:`connect`) and how its rows are read back (:func:`load`).

The version lives in ``PRAGMA user_version`` (https://sqlite.org/pragma.html#pragma_user_version):
``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``, each in its own
transaction, so a database from any earlier broker opens. Times are REAL seconds since the
Unix epoch; ``size_bytes`` is bytes. Tables are ``WITHOUT ROWID`` (https://sqlite.org/withoutrowid.html).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from typing import Final, Literal

import msgspec

from ..core.protocol import Message
from ..errors import StartupError
from .base import Session, StoredMessage
from .memory import MemoryStore
from .ops import Purge, decode_data, write
from .rows import row_checksum
from .statedir import refuse

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
# Version 4 (issue 13): a name belongs to the UID that first registered it, across restarts.
# The names held by stored sessions become their UIDs' (the earliest session wins a tie).
_V4: Final = """
CREATE TABLE names (
    instance_id TEXT PRIMARY KEY,
    uid INTEGER NOT NULL,
    claimed_at REAL NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO names (instance_id, uid, claimed_at)
    SELECT instance_id, uid, created_at FROM sessions ORDER BY created_at
"""
# Version 5 (issue 14): every message row carries the checksum of what a client reads
# (store/rows.py), computed here for the rows already stored; a row that fails it at load is
# moved to ``quarantine`` (never delivered). ``parrot_checksum`` is registered by migrate().
_V5: Final = """
ALTER TABLE messages ADD COLUMN checksum INTEGER;
UPDATE messages SET checksum = parrot_checksum(id, sender, recipient, content, data, sent_at);
CREATE TABLE quarantine (
    id BLOB PRIMARY KEY, mailbox BLOB, sender BLOB, content BLOB, data BLOB, sent_at BLOB,
    recipient BLOB, checksum INTEGER,
    quarantined_at REAL NOT NULL
) WITHOUT ROWID
"""
# Version 6 (issue 14): SQLite is the source of truth for messages. Each row names the UID
# charged for it (the sender quota; for older rows the sender name's owner, else the UID of the
# session holding it, never for mail to the sender's own name); the mailbox index covers what a
# start needs (counts, bytes, payers and running leases: no message body is read). A lease
# updates the index entry on the leaf page its message's insert already wrote (measured: a
# partial index on lease_until, or a table of leases, cost 8 us more per delivered message).
_V6: Final = """
ALTER TABLE messages ADD COLUMN payer INTEGER;
UPDATE messages SET payer = COALESCE(
    (SELECT uid FROM names WHERE names.instance_id = messages.sender),
    (SELECT uid FROM sessions WHERE sessions.instance_id = messages.sender ORDER BY created_at DESC LIMIT 1))
    WHERE sender != mailbox;
DROP INDEX messages_by_mailbox;
CREATE INDEX messages_by_mailbox ON messages (mailbox, id, size_bytes, payer, lease_until)
"""
#: ``MIGRATIONS[i]``: the DDL, ``;``-separated, that takes version ``i`` to ``i + 1``.
MIGRATIONS: Final[tuple[str, ...]] = (_V1, _V2, _V3, _V4, _V5, _V6)
#: The version this broker writes (``PRAGMA user_version``).
SCHEMA_VERSION: Final = len(MIGRATIONS)


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` to :data:`SCHEMA_VERSION`, one transaction per step. Returns the version found.

    ``db`` must be in autocommit mode (``isolation_level=None``): each step is its own
    ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if it fails.

    Raises:
        sqlite3.Error: a step failed (that step is rolled back; earlier steps stay).
        ValueError: the database's version is newer than this broker's.
    """
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    db.create_function("parrot_checksum", 6, row_checksum, deterministic=True)
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


def connect(path: str, durability: Literal["normal", "fsync"], now: float) -> sqlite3.Connection:
    """Connect to ``path`` in autocommit mode (``isolation_level=None``), usable from the
    writer thread too, and make it ready: ``busy_timeout`` 0, WAL mode, ``synchronous``
    NORMAL (FULL for ``durability="fsync"``), no autocheckpoint, :func:`check_integrity`,
    :func:`migrate`, then purge what expired by ``now`` (seconds since the epoch). Pragmas:
    https://sqlite.org/pragma.html.

    Raises:
        StartupError: the database cannot use WAL mode, or fails :func:`check_integrity`.
        sqlite3.Error: the file is not a database, is corrupt, or cannot be written.
        ValueError: the schema is newer than this broker's.
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout = 0")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise refuse(f"state database {path}: cannot use WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'fsync' else 'NORMAL'}")
        # No checkpoint inside a commit: small commits may run on the event loop, and a
        # checkpoint fsyncs the database. The shell calls checkpoint() in its worker thread
        # when checkpoint_due() says so (https://sqlite.org/wal.html#ckpt).
        db.execute("PRAGMA wal_autocheckpoint = 0")
        check_integrity(db, path)
        migrate(db)
        db.execute("BEGIN IMMEDIATE")  # proves the file is writable now
        write(db, [Purge(now)])
        db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    return db


#: The fix named in every refusal for a damaged database (docs/durability.md, "Backups").
RESTORE_HINT: Final = ("stop the broker and restore parrot.db from a backup (docs/durability.md), or move "
                       "it aside to start with an empty store")


def check_integrity(db: sqlite3.Connection, path: str) -> None:
    """``PRAGMA quick_check`` on the open database, before anything is written to it
    (https://sqlite.org/pragma.html#pragma_quick_check: the b-tree structure of every table
    and index page, O(database size), without integrity_check's index-content cross-check).
    Its cost is in docs/durability.md ("Integrity at start").

    Raises:
        StartupError: one line naming ``path``, the first findings, and the fix.
        sqlite3.Error: the check itself could not run (the caller turns it into one line).
    """
    rows = [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()]
    if rows != ["ok"]:
        # A finding may span lines ("*** in database main ***\nOn tree page 5 ..."): one line.
        found = "; ".join(" ".join(r.replace("*** in database main ***", "").split()) for r in rows[:3])[:200]
        raise refuse(f"state database {path} is corrupt (quick_check: {found}); {RESTORE_HINT}")


def load(db: sqlite3.Connection, mirror: MemoryStore) -> str | None:
    """Load sessions, name owners, last-seen times and forwards into ``mirror`` (an empty
    :class:`MemoryStore`). Messages stay in the table (:mod:`parrot_ipc.store.mailboxes` reads
    their counts from an index) and so do idempotency keys (:mod:`parrot_ipc.store.idempotency`).
    Returns the highest message id ever issued (messages, idempotency keys, quarantined rows and
    the ``meta`` row ``last_id``: each a b-tree end, O(log n)), or None for an empty database.

    Raises:
        sqlite3.Error: a read failed.
        msgspec.MsgspecError: a stored JSON value (scopes) does not decode.
    """
    for row in db.execute("SELECT token_hash, instance_id, uid, gid, pid, scopes, created_at, "
                          "expires_at, last_rename_at, bound_pid, bound_start_time "
                          "FROM sessions ORDER BY created_at"):
        scopes = frozenset(msgspec.json.decode(row[5], type=list[str]))
        mirror.put_session(Session(bytes(row[0]), row[1], row[2], row[3], row[4], scopes, row[6], row[7],
                                   row[8], bound_pid=row[9], bound_start_time=row[10]))
    for name, uid, claimed_at in db.execute("SELECT instance_id, uid, claimed_at FROM names"):
        mirror.put_name_owner(name, uid, claimed_at)
    for name, seen in db.execute("SELECT instance_id, last_seen FROM instances"):
        mirror.touch_instance(name, seen)
    for old, new, until in db.execute("SELECT old, new, until FROM forwards"):
        mirror.put_forward(old, new, until)
    max_id = ""
    for (top,) in db.execute("SELECT max(id) FROM messages UNION ALL SELECT max(id) FROM idempotency "
                             "UNION ALL SELECT value FROM meta WHERE key = 'last_id' UNION ALL "
                             "SELECT CAST(max(id) AS TEXT) FROM quarantine WHERE id IS NOT NULL"):
        max_id = max(max_id, top or "")
    return max_id or None


#: The ``messages`` columns :func:`message_from_row` takes, in its argument order (a SELECT
#: list). Text columns are read as BLOBs: a damaged byte may not be UTF-8, and must quarantine
#: the row rather than fail the whole read.
MESSAGE_COLUMNS: Final = ("CAST(id AS BLOB), CAST(mailbox AS BLOB), CAST(sender AS BLOB), CAST(content AS BLOB), "
                          "data, CAST(sent_at AS BLOB), size_bytes, CAST(recipient AS BLOB), lease_until, checksum")


def message_from_row(mid: bytes, box: bytes, sender: bytes, content: bytes, data: bytes | None,
                     sent_at: bytes, size: int, to: bytes | None, until: float,
                     checksum: int | None) -> StoredMessage | None:
    """THE read check of a message row (issue 14), read with :data:`MESSAGE_COLUMNS`: its
    stored message, or None when the row does not match its checksum
    (:func:`parrot_ipc.store.rows.row_checksum`), has none, is not UTF-8 or has values of the
    wrong type. None means: quarantine it, never deliver it. The checksum is checked before
    ``data`` is decoded.

    Raises:
        msgspec.DecodeError: ``data`` matches its checksum yet is not JSON (never written so).
    """
    try:
        fields = (mid.decode(), box.decode(), sender.decode(), content.decode(), sent_at.decode(),
                  None if to is None else to.decode())
        ok = checksum is not None and checksum == row_checksum(
            fields[0], fields[2], fields[5], fields[3], data, fields[4])
    except (AttributeError, TypeError, UnicodeDecodeError):
        return None
    if not ok or type(size) is not int:
        return None
    payload, reply_to = decode_data(data)
    msg = Message(id=fields[0], from_=fields[2], to=fields[5] or fields[1], content=fields[3],
                  data=payload, sent_at=fields[4], reply_to=reply_to)
    return StoredMessage(msg, fields[1], size, until)


def quick_check(path: str, timeout_s: float = 2.0) -> str | None:
    """Run ``PRAGMA quick_check`` on the database file ``path``, opened read-only (a URI with
    ``mode=ro``; https://sqlite.org/pragma.html#pragma_quick_check, https://sqlite.org/uri.html).

    Args:
        path: the database file.
        timeout_s: how long to wait for a lock held by a running broker, in seconds.

    Returns:
        None if the check says ``ok``; else one line: SQLite's error, or ``quick_check: ``
        and its first three findings. Never raises for a damaged or unreadable file.
    """
    uri = "file:" + urllib.parse.quote(path) + "?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=timeout_s)
        try:
            rows = [str(r[0]) for r in con.execute("PRAGMA quick_check").fetchall()]
        finally:
            con.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if rows == ["ok"] else f"quick_check: {'; '.join(rows[:3])}"


def startup_error(path: str, exc: BaseException) -> BaseException:
    """The one-line StartupError for ``exc``, which failed opening the database ``path``
    (:meth:`parrot_ipc.store.sqlite.SqliteStore.open`); other exceptions are returned as they are."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, sqlite3.DatabaseError):
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            return refuse(f"state database {path} is corrupt or not a database: {exc}; {RESTORE_HINT}")
        return refuse(f"state database {path} cannot be used: {exc}")
    if isinstance(exc, ValueError | OSError | msgspec.MsgspecError):  # newer schema, bad rows, I/O
        return refuse(f"state database {path}: {exc}")
    if isinstance(exc, TypeError | KeyError | IndexError | AttributeError):
        # A row whose values have the wrong types (a damaged page that quick_check let
        # through): one line, never a traceback (issue 14).
        line = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return refuse(f"state database {path} has a row this broker cannot read ({line}); {RESTORE_HINT}")
    return exc
