"""AsyncClient against a scripted server: pipelined calls and cancellation keep the stream whole.

No fixed sleeps: a step waits until every task is blocked (``trio.testing.wait_all_tasks_blocked``),
and the test that waits out a timeout runs on trio's autojump MockClock (pytest-trio's
``autojump_clock``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio.testing

from parrot_ipc import AsyncClient, BrokerUnavailable


async def test_a_caller_cancelled_while_writing_never_loses_another_callers_request(tmp_path: Path) -> None:
    """Caller A's big request fills the socket buffer (the server is not reading yet); caller B
    queues a ping behind it; A is cancelled. B's ping must still reach the server whole and get
    its answer, and the server must never see a torn frame."""
    path = str(tmp_path / "s.sock")
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    start_reading = trio.Event()
    seen: list[dict] = []

    async def server() -> None:
        sock, _ = await listener.accept()
        stream = trio.SocketStream(sock)
        await start_reading.wait()
        buf = b""
        while True:
            data = await stream.receive_some(1 << 20)
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                req = json.loads(line)  # a torn frame would fail here
                seen.append(req)
                if req["method"] == "ping":
                    await stream.send_all(b'{"jsonrpc":"2.0","id":%d,"result":"pong"}\n' % req["id"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        async with AsyncClient(path, timeout_s=10) as client:
            a_scope = trio.CancelScope()

            async def caller_a() -> None:
                with a_scope:
                    await client.send("x", "A" * (4 << 20))  # far more than the socket buffer

            nursery.start_soon(caller_a)
            await trio.testing.wait_all_tasks_blocked()  # A is blocked in its write
            assert client._writing and not seen
            got: list[str] = []
            b_done = trio.Event()

            async def caller_b() -> None:
                got.append(await client.ping())
                b_done.set()

            nursery.start_soon(caller_b)
            await trio.testing.wait_all_tasks_blocked()  # B's ping is queued behind A's write
            assert client._out.endswith(b'"method":"ping"}\n')
            a_scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            start_reading.set()
            with trio.fail_after(5):
                await b_done.wait()
            assert got == ["pong"]
            assert [r["method"] for r in seen] == ["send", "ping"]
        nursery.cancel_scope.cancel()
    os.unlink(path)


async def test_a_write_the_broker_never_reads_ends_in_broker_unavailable_for_every_caller(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The server never reads: after ``timeout_s`` (0.5 s of the mock clock) the write gives up,
    the connection closes, and both the writer and the caller queued behind it get
    BrokerUnavailable saying why."""
    path = str(tmp_path / "s.sock")
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    held: list[trio.socket.SocketType] = []

    async def server() -> None:  # accepts, then reads nothing
        sock, _ = await listener.accept()
        held.append(sock)
        await trio.sleep_forever()

    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        async with AsyncClient(path, timeout_s=0.5) as client:

            async def call(coro_fn: Callable[[], Awaitable[object]]) -> None:
                try:
                    await coro_fn()
                except (BrokerUnavailable, trio.TooSlowError) as exc:  # kept: a TooSlowError fails the check below
                    errors.append(exc)

            with trio.fail_after(5):
                async with trio.open_nursery() as callers:
                    callers.start_soon(call, lambda: client.send("x", "A" * (4 << 20)))
                    await trio.testing.wait_all_tasks_blocked()  # the send is blocked in its write
                    await trio.sleep(0.05)  # mock time (instant): the ping's deadline is after the write's
                    callers.start_soon(call, client.ping)
        nursery.cancel_scope.cancel()
    assert len(errors) == 2
    for exc in errors:  # both callers are told why, neither waits out its own timeout
        assert isinstance(exc, BrokerUnavailable) and "read none of our requests for 0.5 s" in str(exc), exc
    os.unlink(path)


def test_one_client_spec_covers_every_method_the_broker_serves() -> None:
    """client/spec.py has one Method per JSON-RPC method of the broker, and both clients get
    each of them from it (the blocking one returns results, the trio one coroutines)."""
    from parrot_ipc import Client
    from parrot_ipc.client.spec import METHODS as CLIENT_METHODS
    from parrot_ipc.client.spec import Method
    from parrot_ipc.core.broker import METHODS as BROKER_METHODS

    assert sorted(CLIENT_METHODS) == sorted(BROKER_METHODS)
    for name, method in CLIENT_METHODS.items():
        assert method.name == name
        assert getattr(Client, name) is method and getattr(AsyncClient, name) is method
        # The relay's methods check the admission's 'relay' scope, not a session (issue 18).
        no_session = {"ping", "get_token", "authenticate", "get_resource", "release", "relay_take", "relay_ack",
                      "relay_deliver"}
        assert isinstance(method, Method) and method.session == (name not in no_session)
