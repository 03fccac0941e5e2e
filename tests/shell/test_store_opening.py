"""The broker answers ``ping`` and ``get_token`` while a large store is still opening (issue 14):
the SQLite store's ``quick_check`` and mailbox counts run in a worker thread, every other
request waits for them, and a store that fails them stops the broker without answering."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import trio
from test_memory_streams import MemoryListener, _call, _lines, _req

from parrot_ipc.core import Broker, BrokerConfig, DefaultPolicy, PeerCredentials
from parrot_ipc.core.methods import answers_while_opening
from parrot_ipc.core.protocol import Message
from parrot_ipc.errors import StartupError
from parrot_ipc.shell.clock import trio_wall_clock
from parrot_ipc.shell.server import BrokerServer
from parrot_ipc.store.base import StoredMessage
from parrot_ipc.store.sqlite import SqliteStore

PEER = PeerCredentials(pid=os.getpid(), uid=os.geteuid(), gid=os.getegid())


def _store_with_mail(d: Path, n: int) -> None:
    s = SqliteStore.open(str(d))
    for i in range(1, n + 1):
        m = Message(id=f"{i:018x}", from_="alice", to="bob", content=f"m{i}", sent_at="2027-01-15T08:00:00.000Z")
        s.enqueue(StoredMessage(m, "bob", 2))
    s.close()


def _server(store: SqliteStore, opening: Callable[[], Callable[[], None]]) -> tuple[BrokerServer, MemoryListener]:
    clock = trio_wall_clock()
    broker = Broker(config=BrokerConfig(), policy=DefaultPolicy(os.geteuid()), clock=clock, store=store)
    listener = MemoryListener()
    return BrokerServer(broker, listener, identify=lambda _: PEER, clock=clock, opening=opening), listener


def test_only_ping_and_get_token_answer_while_opening() -> None:
    assert answers_while_opening(_req(1, "ping")) and answers_while_opening(_req(1, "get_token", instance_id="x"))
    assert not answers_while_opening(_req(1, "receive"))
    assert not answers_while_opening(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]\n')  # a batch waits
    assert not answers_while_opening(b"not json\n")


async def test_ping_and_get_token_answer_while_the_mailboxes_are_read_and_receive_waits(tmp_path: Path) -> None:
    d = tmp_path / "state"
    _store_with_mail(d, 3)
    store = SqliteStore.open(str(d), defer_mail=True)
    go = threading.Event()

    def opening() -> Callable[[], None]:
        assert go.wait(10)  # the worker thread: the quick_check and counts take "long"
        return store.open_mail(1.8e9)

    server, listener = _server(store, opening)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        c = await listener.connect()
        assert (await _call(c, 1, "ping"))["result"] == "pong"
        assert (await _call(c, 2, "get_token", instance_id="bob"))["result"]["instance_id"] == "bob"
        assert not server.opened
        await c.send_all(_req(3, "receive", max=10))
        with trio.move_on_after(0.3):
            await _lines(c, 1)
            raise AssertionError("receive was answered before the store was open")
        go.set()
        (resp,) = await _lines(c, 1)
        assert [m["content"] for m in resp["result"]["messages"]] == ["m1", "m2", "m3"]
        assert server.opened
        server.shutdown()
    store.close()


async def test_a_store_that_fails_to_open_stops_the_broker_and_answers_nothing_else(tmp_path: Path) -> None:
    d = tmp_path / "state"
    _store_with_mail(d, 1)
    store = SqliteStore.open(str(d), defer_mail=True)

    def opening() -> Callable[[], None]:
        raise StartupError("refusing to start: state database x is corrupt (quick_check: test)")

    server, listener = _server(store, opening)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            c = await listener.connect()
            await c.send_all(_req(1, "receive", max=10))
            # serve() returns by itself: the broker stops
    assert isinstance(server.open_error, StartupError) and "quick_check" in str(server.open_error)
    assert await c.receive_some(65536) == b""  # closed, the receive never answered
    store.close()
