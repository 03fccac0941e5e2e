"""``Bindings`` keeps a connection's session, its subscription and its in-flight pushes in step."""

from __future__ import annotations

import pytest

from parrot_ipc.core import Admission, Connection, PeerCredentials
from parrot_ipc.core.connection import Bindings
from parrot_ipc.store import Session


def _conn(n: int) -> Connection:
    return Connection(n, PeerCredentials(4000 + n, 1000, 1000), Admission(True, "test"))


def _session(name: str) -> Session:
    return Session(name.encode(), name, 1000, 1000, 4000, frozenset(), 0.0, 100.0)


def test_unbind_unsubscribes_and_forgets_in_flight_pushes() -> None:
    b, c, s = Bindings(), _conn(1), _session("a")
    b.bind(c, s)
    b.subscribe(c)
    b.pushed(c, "m1")
    b.pushed(c, "m2")
    assert c.subscribed and c.push_room(10) == 8 and b.online("a", s)
    b.unbind(c)
    assert not c.subscribed and c.push_room(10) == 10
    assert not b.online("a", s) and b.names() == [] and len(b) == 0
    assert c.session is s  # still readable: a later request learns why it is refused
    b.settle(["m1"])  # a late ack of a forgotten push is harmless
    assert c.push_room(10) == 10


def test_settle_frees_window_room_on_the_connection_it_was_pushed_to() -> None:
    b, c1, c2 = Bindings(), _conn(1), _conn(2)
    b.bind(c1, _session("a"))
    b.bind(c2, _session("b"))
    b.pushed(c1, "m1")
    b.pushed(c2, "m2")
    b.settle(["m1", "unknown"])
    assert (c1.push_room(1), c2.push_room(1)) == (1, 0)


def test_binding_again_leaves_the_old_instance_and_its_pushes() -> None:
    b, c = Bindings(), _conn(1)
    old, new = _session("a"), _session("b")
    b.bind(c, old)
    b.subscribe(c)
    b.pushed(c, "m1")
    b.bind(c, new)
    assert list(b.connections("a")) == [] and list(b.connections("b")) == [c]
    assert not c.subscribed and c.push_room(1) == 1 and c.session is new


def test_unbind_session_touches_only_that_sessions_connections() -> None:
    b, c1, c2 = Bindings(), _conn(1), _conn(2)
    dead, live = _session("a"), _session("a")
    b.bind(c1, dead)
    b.bind(c2, live)
    b.unbind_session(dead)
    assert list(b.connections("a")) == [c2]


def test_rename_moves_the_bound_connections() -> None:
    b, c = Bindings(), _conn(1)
    b.bind(c, _session("a"))
    b.rename("a", "b")
    assert b.names() == ["b"] and list(b.connections("b")) == [c]


def test_connection_state_is_read_only_outside_bindings() -> None:
    c = _conn(1)
    for name, value in (("session", _session("a")), ("subscribed", True)):
        with pytest.raises(AttributeError):
            setattr(c, name, value)
