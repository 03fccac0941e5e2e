"""Name owners in the durable store (issue 13): they survive a restart, and a database from
before issue 13 gives each stored session's name to its UID."""

from __future__ import annotations

from pathlib import Path

from parrot_ipc.store.sqlite import SqliteStore, migrate

from .conftest import database_at_version

NOW = 1_800_000_000.0


def _open(d: Path) -> SqliteStore:
    return SqliteStore.open(str(d), clock=lambda: NOW)


def test_name_owners_survive_a_restart_and_a_release_too(tmp_path: Path) -> None:
    s = _open(tmp_path)
    s.put_name_owner("eve-b", 1000, NOW)
    s.put_name_owner("gone", 1000, NOW)
    s.delete_name_owner("gone")
    s.close()
    s2 = _open(tmp_path)
    assert s2.name_owner("eve-b") == 1000 and s2.name_owner("gone") is None
    assert list(s2.name_owners()) == [("eve-b", 1000)]
    s2.close()


def test_migration_to_v4_gives_each_stored_sessions_name_to_its_uid(tmp_path: Path) -> None:
    db = database_at_version(tmp_path / "old.db", 3)
    db.execute("INSERT INTO sessions (token_hash, instance_id, uid, gid, pid, scopes, created_at, expires_at) "
               "VALUES (x'01', 'eve-b', 1000, 1000, 1, '[]', 1.0, 2.0)")
    assert migrate(db) == 3
    assert db.execute("SELECT instance_id, uid FROM names").fetchall() == [("eve-b", 1000)]
    db.close()
