"""The SQLite schema of the durable store: its DDL, one migration per version, and :func:`migrate`.

The version lives in ``PRAGMA user_version`` (https://sqlite.org/pragma.html#pragma_user_version):
``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``, each in its own
transaction, so a database from any earlier broker opens. Times are REAL seconds since the
Unix epoch; ``size_bytes`` is bytes. Tables are ``WITHOUT ROWID`` (https://sqlite.org/withoutrowid.html).
"""

from __future__ import annotations

import sqlite3
from typing import Final

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
#: ``MIGRATIONS[i]``: the DDL, ``;``-separated, that takes version ``i`` to ``i + 1``.
MIGRATIONS: Final[tuple[str, ...]] = (_V1, _V2, _V3)
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
