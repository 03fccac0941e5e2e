"""The trio shell over real AF_UNIX sockets, in process: gate, pipelining, long-poll, push, limits."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
import trio
from shell_harness import Harness, raw, read_lines

from parrot_ipc import AsyncClient, ParrotError


async def test_real_peer_credentials_reach_whoami(harness: Harness) -> None:
    async with AsyncClient(harness.path) as c:
        await c.get_token("alice")
        me = await c.whoami()
    assert (me.uid, me.gid, me.pid) == (os.getuid(), os.getgid(), os.getpid())
    admitted = [f for e, f in harness.audit if e == "peer_admitted"]
    assert admitted and admitted[0]["uid"] == os.getuid() and admitted[0]["pid"] == os.getpid()


async def test_refused_peer_gets_one_error_line_then_eof(harness: Harness) -> None:
    harness.fake_uids.append(4242)
    stream = await raw(harness.path)
    # Even a request sent at once is never answered: the refusal is written before any read.
    await stream.send_all(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    lines = await read_lines(stream, 2)
    assert len(lines) == 1
    assert lines[0]["id"] is None
    assert lines[0]["error"]["code"] == -32002
    assert lines[0]["error"]["data"]["reason"] == "peer_uid_not_allowed"
    assert ("peer_refused", {"uid": 4242}) in [(e, {"uid": f["uid"]}) for e, f in harness.audit]


async def test_token_from_another_uid_is_unauthenticated(make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(broker_uid=4242)  # type: ignore[misc]
    async with AsyncClient(h.path) as root_client:
        token = (await root_client.get_token("alice")).token
    h.fake_uids.append(4242)  # an admitted peer, but not the uid the token is bound to
    async with AsyncClient(h.path) as other:
        with pytest.raises(ParrotError) as info:
            await other.authenticate(token)
    assert info.value.code == -32001 and info.value.reason == "token_uid_mismatch"
    assert any(e == "token_uid_mismatch" and f["uid"] == 4242 for e, f in h.audit)
    assert all(token not in json.dumps(f) for _, f in h.audit)
    h.server.shutdown()


async def test_pipelined_requests_answer_in_order(harness: Harness) -> None:
    stream = await raw(harness.path)
    reqs = [b'{"jsonrpc":"2.0","id":0,"method":"get_token","params":{"instance_id":"p"}}\n']
    reqs += [
        json.dumps({"jsonrpc": "2.0", "id": i, "method": "send",
                    "params": {"to": "q", "content": f"m{i}"}}).encode() + b"\n"
        for i in range(1, 200)
    ]
    await stream.send_all(b"".join(reqs))
    lines = await read_lines(stream, 200)
    assert [r["id"] for r in lines] == list(range(200))
    assert all("result" in r for r in lines)
    await stream.aclose()


async def _until_parked(h: Harness, instance_id: str) -> None:
    """Poll until ``instance_id``'s long-poll ``receive`` waits in the server (no fixed sleep)."""
    with trio.fail_after(5):
        while instance_id not in h.server._waiters:
            await trio.sleep(0.005)


async def test_long_poll_receive_wakes_on_send(harness: Harness) -> None:
    async with AsyncClient(harness.path) as bob, AsyncClient(harness.path) as alice:
        await bob.get_token("bob")
        await alice.get_token("alice")
        got: list[str] = []

        async def wait_for_mail() -> None:
            msgs = await bob.receive(wait_s=10)
            got.extend(m.content for m in msgs)

        t0 = trio.current_time()
        async with trio.open_nursery() as n:
            n.start_soon(wait_for_mail)
            await _until_parked(harness, "bob")
            assert got == []
            await alice.send("bob", "wake up")
        assert got == ["wake up"]
        assert trio.current_time() - t0 < 5


async def test_long_poll_times_out_empty(harness: Harness) -> None:
    async with AsyncClient(harness.path) as bob:
        await bob.get_token("bob")
        t0 = trio.current_time()
        assert await bob.receive(wait_s=0.3) == []
        assert 0.25 <= trio.current_time() - t0 < 3


async def test_subscribe_pushes_messages_and_ack_removes_them(harness: Harness) -> None:
    async with AsyncClient(harness.path) as bob, AsyncClient(harness.path) as alice:
        await bob.get_token("bob")
        await alice.get_token("alice")
        await alice.send("bob", "queued before subscribe")
        assert await bob.subscribe() is True
        await alice.send("bob", "pushed after subscribe")
        seen = []
        with trio.fail_after(5):
            async for m in bob.messages():
                seen.append(m)
                if len(seen) == 2:
                    break
        assert [m.content for m in seen] == ["queued before subscribe", "pushed after subscribe"]
        assert {m.from_ for m in seen} == {"alice"}
        assert await bob.ack([m.id for m in seen]) == 2
        assert await bob.receive() == []


async def test_unacked_lease_is_redelivered_after_lease_s(make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(lease_s=0.2)  # type: ignore[misc]
    async with AsyncClient(h.path) as c:
        await c.get_token("solo")
        await c.send("solo", "again")
        first = await c.receive()
        assert [m.content for m in first] == ["again"]
        assert await c.receive() == []  # leased
        again = await c.receive(wait_s=3)  # the ticker re-queues it and wakes this poll
        assert [m.id for m in again] == [first[0].id]
    h.server.shutdown()


async def test_oversized_frame_gets_32004_and_close_others_unaffected(make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(max_frame_bytes=1024)  # type: ignore[misc]
    stream = await raw(h.path)
    await stream.send_all(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"A" * 5000)
    lines = await read_lines(stream, 2)
    assert len(lines) == 1 and lines[0]["error"]["code"] == -32004 and lines[0]["id"] is None
    async with AsyncClient(h.path) as c:
        assert await c.ping() == "pong"
    h.server.shutdown()


async def test_garbage_from_one_client_leaves_connection_usable(harness: Harness) -> None:
    stream = await raw(harness.path)
    await stream.send_all(b"\xff\xfe not json\n" + b'{"jsonrpc":"2.0","id":7,"method":"ping"}\n')
    lines = await read_lines(stream, 2)
    assert lines[0]["error"]["code"] == -32700
    assert lines[1] == {"jsonrpc": "2.0", "id": 7, "result": "pong"}
    await stream.aclose()


async def test_handshake_timeout_closes_silent_connection(make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(handshake_timeout_s=0.2)  # type: ignore[misc]
    stream = await raw(h.path)
    with trio.fail_after(3):
        assert await stream.receive_some(100) == b""
    assert any(e == "handshake_timeout" for e, _ in h.audit)
    h.server.shutdown()


async def test_shutdown_answers_waiting_poll_and_unlinks_socket(make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness()  # type: ignore[misc]
    async with AsyncClient(h.path) as c:
        await c.get_token("late")
        result: list[object] = []

        async def poll() -> None:
            result.append(await c.receive(wait_s=30))

        async with trio.open_nursery() as n:
            n.start_soon(poll)
            await _until_parked(h, "late")
            h.server.shutdown()
        assert result == [[]]
    assert h.unlinked == [True]
    assert not os.path.exists(h.path)


async def test_revoked_session_is_dropped_on_every_connection(harness: Harness) -> None:
    async with AsyncClient(harness.path) as a, AsyncClient(harness.path) as b:
        token = (await a.get_token("shared")).token
        await b.authenticate(token)
        assert await a.revoke() is True
        with pytest.raises(ParrotError) as info:
            await b.whoami()
        assert info.value.code == -32001 and info.value.reason == "token_revoked"
