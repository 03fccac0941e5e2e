"""Hostile clients against the trio shell: non-readers, slow subscribers, slowloris, floods."""

from __future__ import annotations

import json
from collections.abc import Callable

import trio
from shell_harness import Harness, raw

from parrot_ipc import AsyncClient


async def _send_until_blocked(sock: trio.socket.SocketType, data: bytes, stall_s: float = 0.5) -> int:
    """Write ``data`` until a write stalls for ``stall_s``; returns exactly the bytes written.

    Uses the socket's own ``send``, which trio cancels atomically (nothing sent), unlike a
    cancelled ``send_all``.
    """
    sent, view = 0, memoryview(data)
    while sent < len(data):
        with trio.move_on_after(stall_s):
            sent += await sock.send(view[sent : sent + 65536])
            continue
        break
    return sent


async def test_a_non_reading_client_is_back_pressured_and_loses_nothing(make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(max_pending_bytes=64 * 1024, max_pending_responses=16,  # type: ignore[misc]
                                    rate_per_s=1e9, burst=1e9)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(h.path)
    n = 100_000
    pings = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % i for i in range(n))
    sent = await _send_until_blocked(sock, pings)
    assert sent < len(pings)  # the broker stopped reading this connection
    (link,) = h.server._links.values()
    # Queued output stays within the byte bound plus one frame.
    assert link.queued_bytes <= 64 * 1024 + 100
    async with AsyncClient(h.path) as other:  # everyone else is served as usual
        with trio.fail_after(2):
            assert await other.ping() == "pong"
    # Now read: every request is answered, in order, nothing lost.
    hog = trio.SocketStream(sock)
    got, buf = 0, b""

    async def pump_rest() -> None:
        await hog.send_all(pings[sent:])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump_rest)
        with trio.fail_after(60):
            while got < n:
                buf += await hog.receive_some(1 << 20)
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    assert json.loads(line) == {"jsonrpc": "2.0", "id": got, "result": "pong"}, line
                    got += 1
    assert got == n
    await hog.aclose()
    h.server.shutdown()


async def test_a_subscriber_that_never_reads_is_dropped_and_its_mail_is_kept(
        make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(max_pending_bytes=64 * 1024, lease_s=0.5)  # type: ignore[misc]
    lazy = await raw(h.path)
    await lazy.send_all(b'{"jsonrpc":"2.0","id":1,"method":"get_token","params":{"instance_id":"lazy"}}\n'
                        b'{"jsonrpc":"2.0","id":2,"method":"subscribe"}\n')
    token = None
    buf = b""
    with trio.fail_after(5):
        while buf.count(b"\n") < 2:
            buf += await lazy.receive_some(65536)
    token = json.loads(buf.split(b"\n")[0])["result"]["token"]
    big = "x" * 30_000
    async with AsyncClient(h.path) as sender:
        await sender.get_token("sender")
        for i in range(60):  # ~1.8 MB of pushes: past the socket buffers and the 64 KiB bound
            await sender.send("lazy", f"{i}:{big}")
    with trio.fail_after(5):
        while any(link.conn.instance_id == "lazy" for link in h.server._links.values()):
            await trio.sleep(0.05)
    await lazy.aclose()
    async with AsyncClient(h.path) as again:
        await again.authenticate(token)
        seen: set[int] = set()
        with trio.fail_after(10):
            while len(seen) < 60:
                msgs = await again.receive(max=100, wait_s=2)
                seen.update(int(m.content.split(":")[0]) for m in msgs)
                await again.ack([m.id for m in msgs])
    assert seen == set(range(60))
    h.server.shutdown()


async def test_slowloris_connections_are_closed_at_the_handshake_timeout_while_others_are_served(
        make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(handshake_timeout_s=1.0)  # type: ignore[misc]
    n = 200
    t0 = trio.current_time()  # before the first connect: each deadline runs from its accept, later
    slow = [await raw(h.path) for _ in range(n)]
    closed_at: list[float] = []

    async def drip(stream: trio.SocketStream) -> None:
        try:
            while True:
                await stream.send_all(b"{")  # one byte at a time, never a whole frame
                with trio.move_on_after(0.3):
                    if await stream.receive_some(10) == b"":
                        closed_at.append(trio.current_time() - t0)
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed_at.append(trio.current_time() - t0)

    pings = 0
    async with trio.open_nursery() as nursery:
        for s in slow:
            nursery.start_soon(drip, s)
        async with AsyncClient(h.path) as fresh:
            await fresh.get_token("fresh")  # an answered connection moves past the handshake
            with trio.fail_after(10):
                while len(closed_at) < n:
                    assert await fresh.ping() == "pong"
                    pings += 1
                    await trio.sleep(0.02)
    assert pings > 10
    assert min(closed_at) >= 0.9 and max(closed_at) < 4.0, (min(closed_at), max(closed_at))
    assert sum(1 for e, _ in h.audit if e == "handshake_timeout") >= n
    for s in slow:
        await s.aclose()
    h.server.shutdown()


async def _fill_then_refuse_then_free(h: Harness, cap: int, reason: str, still_counted: Callable[[], bool]) -> None:
    """Open ``cap`` answered connections; one more gets one -32003 ``reason`` line and a close;
    once one of the first closes (``still_counted`` turns False), a new client is served."""
    keep = [await raw(h.path) for _ in range(cap)]
    for s in keep:  # make sure each is admitted (answered) before the extra one
        await s.send_all(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        with trio.fail_after(5):
            assert b"pong" in await s.receive_some(1000)
    extra = await raw(h.path)
    with trio.fail_after(5):
        line = await extra.receive_some(1000)
        assert await extra.receive_some(1000) == b""  # then closed, nothing read from it
    err = json.loads(line)["error"]
    assert err["code"] == -32003 and err["data"]["reason"] == reason, err
    await keep[0].aclose()
    with trio.fail_after(5):
        while still_counted():
            await trio.sleep(0.02)
    async with AsyncClient(h.path) as c:
        assert await c.ping() == "pong"
    for s in keep[1:]:
        await s.aclose()
    h.server.shutdown()


async def test_a_connection_flood_past_the_per_uid_cap_is_refused_with_a_reason(
        make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(max_connections_per_uid=5)  # type: ignore[misc]
    await _fill_then_refuse_then_free(h, 5, "too_many_connections", lambda: h.broker.connections >= 5)


async def test_one_uid_at_its_rate_limit_does_not_slow_another(make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(broker_uid=4242, rate_per_s=50, burst=50)  # type: ignore[misc]
    hog = await raw(h.path)
    await hog.send_all(b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % i for i in range(500)))
    buf = b""
    with trio.fail_after(5):
        while buf.count(b"\n") < 500:
            buf += await hog.receive_some(1 << 16)
    replies = [json.loads(x) for x in buf.split(b"\n") if x]
    limited = [r for r in replies if "error" in r]
    assert limited and all(r["error"]["data"]["reason"] == "rate_limited" for r in limited)
    assert len(replies) - len(limited) <= 60  # about the burst
    h.fake_uids.append(4242)  # another admitted uid: its own bucket
    async with AsyncClient(h.path) as other:
        for _ in range(40):
            assert await other.ping() == "pong"
    await hog.aclose()
    h.server.shutdown()


async def test_an_idle_connection_is_closed_at_idle_timeout_but_a_subscriber_is_kept(
        make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(idle_timeout_s=0.5)  # type: ignore[misc]
    async with AsyncClient(h.path) as sub:
        await sub.get_token("listener")
        await sub.subscribe()  # its last read: from here on it sends nothing
        idle = await raw(h.path)
        await idle.send_all(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')  # past the handshake
        t0 = trio.current_time()
        with trio.fail_after(5):
            got = b""
            while True:
                data = await idle.receive_some(1000)
                if not data:
                    break
                got += data
        waited = trio.current_time() - t0
        assert b'"pong"' in got
        assert 0.4 <= waited < 3.0, waited
        assert any(e == "idle_timeout" for e, _ in h.audit)
        # The subscriber has now been silent for longer than the idle connection that was
        # closed (a whole idle timeout, observed rather than slept): a subscriber is not idle,
        # it waits for pushes. (tests/shell/test_memory_streams.py covers three timeouts.)
        assert await sub.ping() == "pong"
    await idle.aclose()
    h.server.shutdown()


async def test_connections_past_max_connections_are_closed_at_once_and_a_closed_one_frees_a_slot(
        make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(max_connections=3)  # type: ignore[misc]
    await _fill_then_refuse_then_free(h, 3, "server_full", lambda: h.server._streams >= 3)


async def test_a_reload_that_drops_the_peer_closes_a_back_pressured_connection_at_once(
        make_harness: Callable[..., object]) -> None:
    """Issue 13, finding 6: every connection of a dropped peer closes at once, including one the
    broker is waiting to write to (before: it stayed until ``idle_timeout_s``)."""
    from parrot_ipc.core.policy import PeerRule, RulePolicy

    h: Harness = await make_harness(max_pending_bytes=64 * 1024, max_pending_responses=16,  # type: ignore[misc]
                                    rate_per_s=1e9, burst=1e9, idle_timeout_s=120.0)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(h.path)
    pings = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % i for i in range(100_000))
    assert await _send_until_blocked(sock, pings) < len(pings)  # the broker waits to write
    h.server.reload_policy(RulePolicy([PeerRule("others", uids=frozenset({4242}))]), "test")
    with trio.fail_after(10):  # far less than idle_timeout_s, and the peer reads nothing
        while h.server._links:
            await trio.sleep(0.01)
    hog = trio.SocketStream(sock)
    with trio.fail_after(10):
        while await hog.receive_some(1 << 20):
            pass  # what was written before the drop, then EOF
    await hog.aclose()
    h.server.shutdown()
