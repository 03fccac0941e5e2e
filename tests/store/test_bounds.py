"""Mailbox bounds and the expiry of unclaimed mail, through the core, on both stores."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parrot_ipc.core import (
    Broker,
    BrokerConfig,
    Connection,
    DefaultPolicy,
    MemoryStore,
    PeerCredentials,
    Store,
)
from parrot_ipc.store.sqlite import SqliteStore

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    opened: list[SqliteStore] = []

    def make() -> Store:
        if request.param == "memory":
            return MemoryStore()
        s = SqliteStore.open(str(tmp_path / "state"))
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def _broker(store: Store, clock: Clock, **cfg: Any) -> Broker:
    return Broker(config=BrokerConfig(**cfg), policy=DefaultPolicy(os.geteuid()), store=store, clock=clock)


def _conn(b: Broker) -> Connection:
    c = b.accept(PeerCredentials(pid=os.getpid(), uid=os.geteuid(), gid=os.getegid()))
    assert isinstance(c, Connection)
    return c


def _call(b: Broker, c: Connection, method: str, **params: Any) -> dict[str, Any]:
    out = b.handle_frame(c, json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
    assert isinstance(out, bytes)
    doc: dict[str, Any] = json.loads(out)
    return doc


def _client(b: Broker, name: str) -> Connection:
    c = _conn(b)
    assert "result" in _call(b, c, "get_token", instance_id=name)
    return c


def test_mailbox_bounds_by_count_and_bytes(make_store: Callable[[], Store]) -> None:
    b = _broker(make_store(), Clock(), max_mailbox_messages=2, max_mailbox_bytes=10)
    a = _client(b, "alice")
    assert "result" in _call(b, a, "send", to="bob", content="1234")
    assert "result" in _call(b, a, "send", to="bob", content="1234")
    err = _call(b, a, "send", to="bob", content="x")["error"]
    assert (err["code"], err["data"]["reason"]) == (-32007, "mailbox_full")
    err = _call(b, a, "send", to="carol", content="x" * 11)["error"]
    assert (err["code"], err["data"]["reason"]) == (-32007, "mailbox_full")


def test_unclaimed_mailboxes_are_bounded(make_store: Callable[[], Store]) -> None:
    b = _broker(make_store(), Clock(), max_unclaimed_mailboxes=3)
    a = _client(b, "alice")
    _client(b, "held")
    for name in ("u1", "u2", "u3"):
        assert "result" in _call(b, a, "send", to=name, content="hi")
    err = _call(b, a, "send", to="u4", content="hi")["error"]
    assert (err["code"], err["data"]["reason"]) == (-32007, "too_many_unclaimed_mailboxes")
    assert "result" in _call(b, a, "send", to="u1", content="again")  # an existing mailbox: fine
    assert "result" in _call(b, a, "send", to="held", content="hi")  # a held name: not counted
    assert "result" in _call(b, a, "send", to="held", content="hi")
    # once someone claims u1, its mailbox no longer counts against the bound
    _client(b, "u1")
    assert "result" in _call(b, a, "send", to="u4", content="hi")


def test_unread_mail_to_names_nobody_holds_expires(make_store: Callable[[], Store]) -> None:
    clock = Clock()
    store = make_store()
    b = _broker(store, clock, unclaimed_mail_ttl_s=7 * DAY, token_ttl_s=30 * DAY)
    a = _client(b, "alice")
    _client(b, "bob")
    _call(b, a, "send", to="ghost", content="old")
    _call(b, a, "send", to="bob", content="old for bob")
    clock.now += 6 * DAY
    _call(b, a, "send", to="ghost", content="younger")
    b.tick()
    assert store.mailbox_usage("ghost")[0] == 2
    clock.now += 1 * DAY + 1
    b.tick()
    assert store.mailbox_usage("ghost")[0] == 1  # "old" expired, "younger" not yet
    assert store.mailbox_usage("bob")[0] == 1  # bob holds his name: his mail never expires
    clock.now += 6 * DAY
    b.tick()
    assert store.mailbox_usage("ghost") == (0, 0)
    ghost = _client(b, "ghost")
    assert _call(b, ghost, "receive")["result"]["messages"] == []


def test_expiry_and_bounds_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    s = SqliteStore.open(str(tmp_path / "state"), clock=clock)
    b = _broker(s, clock)
    a = _client(b, "alice")
    ids = [_call(b, a, "send", to="ghost", content=f"m{i}")["result"]["id"] for i in range(3)]
    s.close()
    clock.now += 8 * DAY
    s2 = SqliteStore.open(str(tmp_path / "state"), clock=clock)
    assert s2.mailbox_usage("ghost")[0] == 3 and s2.max_id == ids[-1]
    b2 = Broker(config=BrokerConfig(), policy=DefaultPolicy(os.geteuid()), store=s2, clock=clock,
                id_floor=s2.max_id)
    clock.now += 61  # the first purge runs a minute after start
    b2.tick()
    assert s2.mailbox_usage("ghost") == (0, 0)
    s2.close()
    s3 = SqliteStore.open(str(tmp_path / "state"), clock=clock)
    assert s3.mailbox_usage("ghost") == (0, 0)
    s3.close()
