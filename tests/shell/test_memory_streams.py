"""The shell without sockets: BrokerServer over in-memory streams, driven by trio's MockClock.

Every test here takes pytest-trio's ``autojump_clock`` (``MockClock(autojump_threshold=0)``;
pytest-trio passes a clock to ``trio.run`` only when the test function itself takes it): time
jumps to the next deadline as soon as every task waits, so a 300 s idle timeout takes no real
time and its moment can be asserted exactly. The broker's clock is derived from trio's
(:func:`parrot_ipc.shell.clock.trio_wall_clock`), so leases follow the mock clock too.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from parrot_ipc.core import Broker, BrokerConfig, DefaultPolicy, PeerCredentials
from parrot_ipc.shell.clock import trio_wall_clock
from parrot_ipc.shell.server import BrokerServer


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose peers are in-memory stream pairs (:meth:`connect` returns the client end)."""

    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[trio.abc.Stream](100)

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError from None

    async def aclose(self) -> None:
        await self._send.aclose()
        await trio.lowlevel.checkpoint()


@dataclass
class Rig:
    server: BrokerServer
    listener: MemoryListener
    audit: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
async def make_rig(nursery: trio.Nursery) -> AsyncIterator[Callable[..., Any]]:
    """``await make_rig(**BrokerConfig fields)`` serves a broker in the test's nursery; every
    server made is shut down when the test ends."""
    made: list[Rig] = []

    async def make(**cfg: Any) -> Rig:
        clock = trio_wall_clock()
        audit: list[tuple[str, dict[str, Any]]] = []
        broker = Broker(config=BrokerConfig(**cfg), policy=DefaultPolicy(os.geteuid()), clock=clock,
                        audit=lambda e, f: audit.append((e, f)))
        listener = MemoryListener()
        peer = PeerCredentials(pid=os.getpid(), uid=os.geteuid(), gid=os.getegid())
        server = BrokerServer(broker, listener, identify=lambda stream: peer, clock=clock)
        await nursery.start(server.serve)
        made.append(Rig(server, listener, audit))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()


@pytest.fixture
async def rig(make_rig: Callable[..., Any]) -> Rig:
    r: Rig = await make_rig()
    return r


def _req(rid: int, method: str, **params: Any) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params:
        msg["params"] = params
    return json.dumps(msg).encode() + b"\n"


async def _lines(stream: trio.abc.Stream, n: int) -> list[dict[str, Any]]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed after {buf!r}"
        buf += chunk
    return [json.loads(x) for x in buf.split(b"\n") if x]


async def _call(stream: trio.abc.Stream, rid: int, method: str, **params: Any) -> dict[str, Any]:
    await stream.send_all(_req(rid, method, **params))
    (resp,) = await _lines(stream, 1)
    assert resp["id"] == rid, resp
    return resp


async def _connect(r: Rig, *instance_ids: str | None) -> list[trio.abc.Stream]:
    """One connection to ``r`` per entry; each entry not None takes that instance name
    (``get_token`` as request id 1)."""
    streams = []
    for instance_id in instance_ids:
        c = await r.listener.connect()
        if instance_id is not None:
            await _call(c, 1, "get_token", instance_id=instance_id)
        streams.append(c)
    return streams


async def _until_eof(stream: trio.abc.Stream) -> bytes:
    got = b""
    while chunk := await stream.receive_some(65536):
        got += chunk
    return got


async def test_a_request_gets_its_response(rig: Rig, autojump_clock: trio.testing.MockClock) -> None:
    c = await rig.listener.connect()
    assert await _call(c, 1, "ping") == {"jsonrpc": "2.0", "id": 1, "result": "pong"}


async def test_a_message_goes_from_one_connection_to_another(rig: Rig, autojump_clock: trio.testing.MockClock) -> None:
    alice, bob = await rig.listener.connect(), await rig.listener.connect()
    assert "token" in (await _call(bob, 1, "get_token", instance_id="bob"))["result"]
    await _call(alice, 1, "get_token", instance_id="alice")
    sent = await _call(alice, 2, "send", to="bob", content="hi")
    got = (await _call(bob, 2, "receive"))["result"]
    assert [(m["id"], m["content"]) for m in got["messages"]] == [(sent["result"]["id"], "hi")]


async def test_the_handshake_timeout_closes_a_slow_connection_at_the_mock_deadline(make_rig: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    r: Rig = await make_rig(handshake_timeout_s=7.0)
    c = await r.listener.connect()
    t0 = trio.current_time()
    await c.send_all(b'{"jsonrpc":')  # never a complete frame
    # Bytes were buffered: one -32600 frame_not_terminated line, then EOF (issue 16).
    (line,) = (await _until_eof(c)).splitlines()
    assert json.loads(line)["error"]["data"]["reason"] == "frame_not_terminated"
    assert trio.current_time() - t0 == pytest.approx(7.0, abs=1e-6)
    assert [e for e, _ in r.audit if e.endswith("_timeout")] == ["handshake_timeout"]


async def test_the_idle_timeout_closes_an_idle_connection_but_keeps_a_subscriber(
        make_rig: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    r: Rig = await make_rig(idle_timeout_s=300.0)
    idle, sub = await _connect(r, None, "listener")
    await _call(sub, 2, "subscribe")
    assert (await _call(idle, 1, "ping"))["result"] == "pong"
    t0 = trio.current_time()
    assert await _until_eof(idle) == b""
    assert trio.current_time() - t0 == pytest.approx(300.0, abs=1e-6)
    assert [e for e, _ in r.audit if e.endswith("_timeout")] == ["idle_timeout"]
    await trio.sleep(3 * 300.0)  # three idle timeouts (mock time): a subscriber waits for pushes
    assert (await _call(sub, 3, "ping"))["result"] == "pong"


async def test_an_unacked_message_is_delivered_again_when_its_lease_runs_out_by_the_mock_clock(
        make_rig: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    r: Rig = await make_rig(lease_s=30.0)
    a, b = await _connect(r, "a", "b")
    await _call(a, 2, "send", to="b", content="once more")
    first = (await _call(b, 2, "receive"))["result"]["messages"]
    assert [m["content"] for m in first] == ["once more"]
    assert (await _call(b, 3, "receive"))["result"]["messages"] == []  # leased, not acked
    t0 = trio.current_time()
    again = (await _call(b, 4, "receive", wait_s=60.0))["result"]["messages"]
    assert [m["id"] for m in again] == [first[0]["id"]]
    assert trio.current_time() - t0 == pytest.approx(30.0, abs=1.0)


async def test_past_max_connections_a_new_peer_gets_one_server_full_line_then_eof(
        make_rig: Callable[..., Any], autojump_clock: trio.testing.MockClock) -> None:
    r: Rig = await make_rig(max_connections=2)
    keep = [await r.listener.connect() for _ in range(2)]
    for c in keep:
        assert (await _call(c, 1, "ping"))["result"] == "pong"
    extra = await r.listener.connect()
    got = await _until_eof(extra)
    (line,) = got.splitlines()
    err = json.loads(line)["error"]
    assert (err["code"], err["data"]["reason"]) == (-32003, "server_full")
    await keep[0].aclose()
    while r.server._streams >= 2:
        await trio.sleep(0.01)
    assert (await _call(await r.listener.connect(), 1, "ping"))["result"] == "pong"


async def test_shutdown_finishes_a_long_poll_and_closes_every_connection(rig: Rig, autojump_clock: trio.testing.MockClock) -> None:
    c = await rig.listener.connect()
    await _call(c, 1, "get_token", instance_id="waiter")
    await c.send_all(_req(2, "receive", wait_s=300.0))
    await trio.sleep(5.0)  # mock time: the long poll is parked
    rig.server.shutdown()
    (resp,) = await _lines(c, 1)
    assert (resp["id"], resp["result"]["messages"]) == (2, [])
    assert await _until_eof(c) == b""


async def test_a_reload_that_drops_the_peer_closes_all_its_connections_at_once_long_polls_included(
        rig: Rig, autojump_clock: trio.testing.MockClock) -> None:
    """Issue 13, finding 6: before, the long poll stayed open until its wait_s (300 s here) ran out."""
    from parrot_ipc.core.policy import PeerRule, RulePolicy

    poller, idle, fresh = [await rig.listener.connect() for _ in range(3)]
    await _call(poller, 1, "get_token", instance_id="dropped")
    await _call(idle, 1, "authenticate", token=(await _call(poller, 2, "get_token", instance_id="dropped"))
                ["result"]["token"])
    await poller.send_all(_req(3, "receive", wait_s=300.0))
    await trio.sleep(5.0)  # mock time: the long poll is parked
    t0 = trio.current_time()
    rig.server.reload_policy(RulePolicy([PeerRule("others", uids=frozenset({os.geteuid() + 4242}))]), "test")
    got = [await _until_eof(stream) for stream in (poller, idle, fresh)]
    assert got[1:] == [b"", b""]
    if got[0]:  # the poll may be answered -32001 on its way out, never with mail or an empty list
        (last,) = [json.loads(line) for line in got[0].splitlines()]
        assert (last["id"], last["error"]["code"]) == (3, -32001)
    assert trio.current_time() - t0 < 1.0  # at once, not after wait_s
    (ev,) = [f for e, f in rig.audit if e == "config_reloaded"]
    assert ev["dropped"] == 3
