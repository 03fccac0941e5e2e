"""Sessions and name owners read from SQLite (issue 14): the durable store answers every
session and owner call as the in-memory store does, before and after the commit of what it
depends on and across restarts, and hands out one object per live session (a revocation marked
on it is seen by every holder)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from parrot_ipc.store import MemoryStore
from parrot_ipc.store.base import Session
from parrot_ipc.store.ops import Op
from parrot_ipc.store.sqlite import SqliteStore

from .test_sqlite_store import NOW, _commit, _open

NAMES = ["a", "b", "c", "d"]
TOKENS = [bytes([i]) * 32 for i in range(6)]


def _view(s: Session | None) -> Any:
    return None if s is None else (s.token_hash, s.instance_id, s.uid, s.scopes, s.expires_at, s.last_rename_at)


class SessionsAsMemory(RuleBasedStateMachine):
    """Random put / rename / delete / purge of sessions and claim / free of names, both stores."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="parrot-rec-"))
        self.disk = _open(self.dir / "state")
        self.mem = MemoryStore()
        self.now = NOW
        self.in_flight: list[Op] | None = None
        self.held: dict[bytes, Session] = {}  # what "connections" hold: the disk store's objects

    def teardown(self) -> None:
        self.write_taken()
        self.disk.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _both(self, h: bytes) -> tuple[Session | None, Session | None]:
        return self.disk.get_session(h), self.mem.get_session(h)

    @rule(h=st.sampled_from(TOKENS), name=st.sampled_from(NAMES), ttl=st.sampled_from([5.0, 500.0]))
    def put(self, h: bytes, name: str, ttl: float) -> None:
        d, m = self._both(h)
        assert _view(d) == _view(m)
        if d is not None:
            return  # a token is issued once
        for store in (self.disk, self.mem):
            old = store.session_of(name)
            if old is not None:
                old.revoked = True
                store.delete_session(old)
            store.put_session(Session(h, name, 1000, 1000, 1, frozenset({"send"}), self.now, self.now + ttl))
        self.held[h] = self.disk.get_session(h)  # type: ignore[assignment]

    @rule(h=st.sampled_from(TOKENS), new=st.sampled_from(NAMES))
    def rename(self, h: bytes, new: str) -> None:
        d, m = self._both(h)
        if d is None or m is None or self.disk.session_of(new) is not None or d.instance_id == new:
            assert _view(d) == _view(m)
            return
        for store, s in ((self.disk, d), (self.mem, m)):
            old, s.instance_id, s.last_rename_at = s.instance_id, new, self.now
            store.update_session(s, previous_instance_id=old)

    @rule(h=st.sampled_from(TOKENS))
    def delete(self, h: bytes) -> None:
        d, m = self._both(h)
        assert _view(d) == _view(m)
        if d is not None and m is not None:
            d.revoked = m.revoked = True
            self.disk.delete_session(d)
            self.mem.delete_session(m)

    @rule(dt=st.sampled_from([1.0, 10.0]))
    def purge(self, dt: float) -> None:
        self.now += dt
        self.disk.purge(self.now)
        self.mem.purge(self.now)

    @rule(name=st.sampled_from(NAMES), uid=st.sampled_from([1000, 1001]), free=st.booleans())
    def owner(self, name: str, uid: int, free: bool) -> None:
        for store in (self.disk, self.mem):
            if free:
                store.delete_name_owner(name)
            elif store.name_owner(name) is None:
                store.put_name_owner(name, uid, self.now)

    @rule()
    def commit(self) -> None:
        self.write_taken()
        _commit(self.disk)

    @rule()
    def take(self) -> None:
        if self.in_flight is None:
            self.in_flight, _ = self.disk.take_pending()

    @rule()
    def write_taken(self) -> None:
        if self.in_flight is not None:
            self.disk.apply_ops(self.in_flight)
            self.in_flight = None

    @rule()
    def restart(self) -> None:
        """Nothing is held across a restart (connections are gone)."""
        self.write_taken()
        self.disk.close()
        self.held.clear()
        self.disk = SqliteStore.open(str(self.dir / "state"), clock=lambda: self.now)

    @invariant()
    def same_answers(self) -> None:
        for name in NAMES:
            d, m = self.disk.session_of(name), self.mem.session_of(name)
            assert _view(d) == _view(m), name
            assert d is None or self.disk.get_session(d.token_hash) is d  # one object per session
            assert self.disk.name_owner(name) == self.mem.name_owner(name)
        for h in TOKENS:
            d, m = self._both(h)
            assert _view(d) == _view(m) or (m is not None and not m.live(self.now) and d is None)
            if h in self.held and d is not None:
                assert self.held[h] is d  # a connection's object is the store's
        assert sorted(_view(s) for s in self.disk.sessions()) == sorted(_view(s) for s in self.mem.sessions())
        assert sorted(self.disk.name_owners()) == sorted(self.mem.name_owners())


TestSessionsAsMemory = SessionsAsMemory.TestCase
TestSessionsAsMemory.settings = settings(
    max_examples=int(__import__("os").environ.get("PARROT_EXAMPLES", "60")), stateful_step_count=40,
    deadline=None, suppress_health_check=[HealthCheck.too_slow])
