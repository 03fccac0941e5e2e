"""SqliteStore against a temporary database: round trips through close + reopen, migrations,
purges, and the one-line refusals at start."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from msgspec import UNSET

from parrot_ipc.core.protocol import Message, SendResult
from parrot_ipc.errors import StartupError
from parrot_ipc.store import Session, StoredMessage
from parrot_ipc.store.boxes import LEASED
from parrot_ipc.store.sqlite import DB_NAME, MIGRATIONS, SCHEMA_VERSION, SqliteStore, migrate

NOW = 1_800_000_000.0


def _open(d: Path, **kw: Any) -> SqliteStore:
    return SqliteStore.open(str(d), clock=lambda: NOW, **kw)


def _commit(store: SqliteStore) -> None:
    ops, _ = store.take_pending()
    store.apply_ops(ops)


def _msg(mid: str, to: str, content: str = "hi", data: dict[str, Any] | None = None) -> StoredMessage:
    m = Message(id=mid, from_="alice", to=to, content=content, data=UNSET if data is None else data,
                sent_at="2027-01-15T08:00:00.000Z")
    return StoredMessage(m, to, len(content))


def _snapshot(s: SqliteStore) -> dict[str, Any]:
    """The store's whole state, in comparable form: the mirror (sessions, names, forwards) and
    every queued message (read back from SQLite, issue 14) with its lease and payer."""
    m = s._mirror

    def sess(x: Session) -> tuple[Any, ...]:
        return (x.token_hash, x.instance_id, x.uid, x.gid, x.pid, x.scopes, x.created_at, x.expires_at,
                x.last_rename_at, x.revoked)
    return {
        "sessions": {h: sess(x) for h, x in m._sessions.items()},
        "by_instance": {n: x.token_hash for n, x in m._by_instance.items()},
        "last_seen": dict(m._last_seen),
        "boxes": {n: ([(i.message.id, i.message, i.size_bytes, i.lease_until, i.payer) for i in s.queued(n)],
                      s.mailbox_usage(n)) for n in sorted(s.mailbox_names())},
        "leases": sorted((e.until, mid) for mid, e in s._mem.items() if e.state == LEASED),
        "forwards": dict(m._forwards),
        "idem": dict(m._idem),
    }


def _session(name: str, token: bytes, **kw: Any) -> Session:
    return Session(token, name, 1000, 1000, 42, frozenset({"send", "receive"}), NOW - 10, NOW + 3600, **kw)


def test_every_table_round_trips_through_a_restart(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = _open(d)
    alice, bob = _session("alice", b"a" * 32), _session("bob", b"b" * 32)
    s.put_session(alice)
    s.put_session(bob)
    s.touch_instance("alice", NOW - 5)
    s.touch_instance("bob", NOW - 4)
    for i in range(5):
        s.enqueue(_msg(f"0000000000{i:02d}000000", "bob", f"m{i}", {"n": i} if i % 2 else None))
    s.enqueue(_msg("000000000100000000", "carol"))
    leased = s.lease("bob", 2, NOW + 60)
    assert [m.content for m in leased] == ["m0", "m1"]
    assert s.ack("bob", ["000000000002000000"]) == ["000000000002000000"]
    s.put_forward("carol", "dave", NOW + 7200)
    s.move_mailbox("carol", "dave")
    bob.instance_id, bob.last_rename_at = "robert", NOW - 1
    s.update_session(bob, previous_instance_id="bob")
    s.rename_instance("bob", "robert", NOW - 1)
    s.move_mailbox("bob", "robert")
    s.put_idempotent("alice", "k1", SendResult(id="000000000001000000", to="bob", status="queued"), NOW + 86400)
    _commit(s)
    before = _snapshot(s)
    s.close()

    s2 = _open(d)
    assert _snapshot(s2) == before
    assert s2.max_id == "000000000100000000"
    assert s2.get_session(b"b" * 32) is not None and s2.session_of("robert") is not None
    # the restored leases still run out, and the ready queue stays FIFO
    assert [m.content for m in s2.lease("robert", 10, NOW + 600)] == ["m3", "m4"]
    assert [mid for _, mid in s2.release_expired(NOW + 61)] == [m.id for m in leased]
    assert [m.content for m in s2.lease("robert", 10, NOW + 120)] == ["m0", "m1"]
    s2.close()


def test_close_writes_what_is_pending_and_acks_delete_rows(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = _open(d)
    s.enqueue(_msg("000000000001000000", "bob"))
    s.enqueue(_msg("000000000002000000", "bob"))
    s.touch_instance("bob", NOW)  # coalesced: no seq of its own
    _commit(s)
    s.ack("bob", ["000000000001000000"])
    s.close()  # not committed by a committer: close() writes it
    s2 = _open(d)
    assert [i.message.id for i in s2.queued("bob")] == ["000000000002000000"]
    assert s2.last_seen("bob") == NOW
    rows = sqlite3.connect(d / DB_NAME).execute("SELECT count(*) FROM messages").fetchone()[0]
    assert rows == 1
    s2.close()


def test_id_floor_survives_even_when_every_message_is_acked(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = _open(d)
    s.enqueue(_msg("00000000000a000003", "bob"))
    _commit(s)
    s.ack("bob", ["00000000000a000003"])
    s.close()
    s2 = _open(d)
    assert s2.mailbox_usage("bob") == (0, 0)
    assert s2.max_id == "00000000000a000003"
    s2.close()


def test_purge_drops_expired_sessions_forwards_and_keys(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = _open(d)
    old = _session("old", b"o" * 32)
    old.expires_at = NOW + 10
    s.put_session(old)
    s.put_session(_session("live", b"l" * 32))
    s.put_forward("x", "y", NOW + 10)
    s.put_idempotent("alice", "k", SendResult(id="1", to="bob", status="queued"), NOW + 10)
    s.put_idempotent("alice", "k2", SendResult(id="2", to="bob", status="queued"), NOW + 1000)
    _commit(s)
    s.purge(NOW + 20)
    _commit(s)
    assert s.get_session(b"o" * 32) is None
    s.close()
    s2 = _open(d)
    assert s2.get_session(b"o" * 32) is None and s2.get_session(b"l" * 32) is not None
    assert s2.get_forward("x", NOW) is None
    assert s2.get_idempotent("alice", "k", NOW) is None
    assert s2.get_idempotent("alice", "k2", NOW) is not None
    s2.close()


def test_migration_from_version_1_keeps_the_data(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    path = d / DB_NAME
    db = sqlite3.connect(path, isolation_level=None)
    for stmt in MIGRATIONS[0].split(";"):
        if stmt.strip():
            db.execute(stmt)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO messages VALUES ('000000000005000000', 'bob', 'alice', 'v1 mail', NULL, "
               "'2027-01-15T08:00:00.000Z', 7, 0)")
    db.execute("INSERT INTO sessions VALUES (?, 'bob', 1000, 1000, 1, '[\"receive\"]', ?, ?, NULL)",
               (b"t" * 32, NOW - 1, NOW + 100))
    db.execute("INSERT INTO idempotency VALUES ('alice', 'k', '000000000005000000', 'bob', 'queued', ?)",
               (NOW + 100,))
    db.close()
    os.chmod(path, 0o600)

    s = _open(d)
    assert s.get_session(b"t" * 32) is not None
    assert [m.content for m in s.lease("bob", 10, NOW + 60)] == ["v1 mail"]
    assert s.get_idempotent("alice", "k", NOW) == SendResult(id="000000000005000000", to="bob", status="queued")
    assert s.max_id == "000000000005000000"
    s.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('index', 'table')")}
    assert {"idempotency_by_until", "forwards_by_until", "sessions_by_expiry", "meta"} <= names
    plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN DELETE FROM idempotency WHERE until <= 1"))
    assert "idempotency_by_until" in plan
    db.close()


def test_migrate_is_a_no_op_on_a_current_database(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    assert migrate(db) == 0
    assert migrate(db) == SCHEMA_VERSION


def test_files_are_private_and_wal(tmp_path: Path) -> None:
    d = tmp_path / "deep" / "state"
    s = _open(d)
    s.enqueue(_msg("000000000001000000", "bob"))
    _commit(s)
    assert os.stat(d).st_mode & 0o777 == 0o700
    for name in os.listdir(d):
        assert os.stat(d / name).st_mode & 0o077 == 0, name
    assert sqlite3.connect(d / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


@pytest.mark.parametrize("durability,level", [("normal", 1), ("fsync", 2)])
def test_durability_sets_synchronous(tmp_path: Path, durability: str, level: int) -> None:
    s = _open(tmp_path / "state", durability=durability)
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == level
    s.close()


# ---------------------------------------------------------------------- refusals at start
def _one_line(exc: pytest.ExceptionInfo[StartupError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("refusing to start: ")
    return msg


def test_a_second_broker_on_the_same_state_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = _open(d)
    with pytest.raises(StartupError) as exc:
        _open(d)
    assert "in use by another broker" in _one_line(exc) and str(d / DB_NAME) in str(exc.value)
    s.close()
    _open(d).close()  # the lock goes with close()


def test_a_corrupt_database_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    _open(d).close()
    (d / DB_NAME).write_bytes(b"this is not an sqlite database" * 200)
    with pytest.raises(StartupError) as exc:
        _open(d)
    assert "is corrupt or not a database" in _one_line(exc)
    _open(tmp_path / "other").close()  # and the lock was released on the way out
    with pytest.raises(StartupError):
        _open(d)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    _open(d).close()
    db = sqlite3.connect(d / DB_NAME)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StartupError) as exc:
        _open(d)
    assert "newer than this broker" in _one_line(exc)


def test_unsafe_state_dir_or_db_file_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    with pytest.raises(StartupError) as exc:
        _open(d)
    assert "mode 0700" in _one_line(exc)
    os.chmod(d, 0o700)
    (d / DB_NAME).touch(mode=0o644)
    os.chmod(d / DB_NAME, 0o644)
    with pytest.raises(StartupError) as exc:
        _open(d)
    assert "mode 0600" in _one_line(exc)
    os.unlink(d / DB_NAME)
    (d / DB_NAME).mkdir()
    with pytest.raises(StartupError) as exc:
        _open(d)
    assert "regular file" in _one_line(exc)


def test_a_symlinked_state_dir_or_a_hard_linked_db_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "state").symlink_to(real)
    with pytest.raises(StartupError) as exc:
        _open(tmp_path / "state")
    assert "is a symlink" in _one_line(exc)
    _open(real).close()
    os.link(real / DB_NAME, tmp_path / "other.db")
    with pytest.raises(StartupError) as exc:
        _open(real)
    assert "exactly one hard link" in _one_line(exc) and str(real / DB_NAME) in str(exc.value)


def test_default_state_dir() -> None:
    from parrot_ipc.store.sqlite import default_state_dir

    assert default_state_dir(0, {}) == "/var/lib/parrot-mcp"
    assert default_state_dir(1000, {"XDG_STATE_HOME": "/x/state"}) == "/x/state/parrot-ipc"
    home = os.path.expanduser("~")
    assert default_state_dir(1000, {}) == os.path.join(home, ".local", "state", "parrot-ipc")


def test_a_process_bound_session_keeps_its_pid_and_start_time_through_a_restart(tmp_path: Path) -> None:
    s = _open(tmp_path)
    s.put_session(_session("pinned", b"p" * 32, bound_pid=4321, bound_start_time=987654))
    s.put_session(_session("loose", b"l" * 32))
    _commit(s)
    s.close()
    again = _open(tmp_path)
    pinned, loose = again.get_session(b"p" * 32), again.get_session(b"l" * 32)
    assert pinned is not None and (pinned.bound_pid, pinned.bound_start_time) == (4321, 987654)
    assert loose is not None and (loose.bound_pid, loose.bound_start_time) == (None, None)
    again.close()
