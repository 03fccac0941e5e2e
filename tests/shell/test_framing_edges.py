"""Issue 16 over a real AF_UNIX socket: a last frame ended by EOF, a timeout with a partial frame
buffered, and batches against the frame limit, ``max_pending_responses`` and push ordering."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import trio
from shell_harness import Harness, raw, raw_connect, read_lines

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def _until_eof(s: socket.socket) -> bytes:
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    return buf


async def test_a_last_frame_ended_by_eof_is_answered_then_the_connection_closes(harness: Harness) -> None:
    def client() -> bytes:
        with raw_connect(harness.path) as s:
            s.sendall(b'{"jsonrpc":"2.0","id":0,"method":"ping"}\n' + PING)  # the last one has no "\n"
            s.shutdown(socket.SHUT_WR)
            return _until_eof(s)

    got = await trio.to_thread.run_sync(client)
    assert [json.loads(line) for line in got.splitlines()] == [
        {"jsonrpc": "2.0", "id": 0, "result": "pong"}, {"jsonrpc": "2.0", "id": 1, "result": "pong"}]


async def test_a_batch_ended_by_eof_is_answered(harness: Harness) -> None:
    def client() -> bytes:
        with raw_connect(harness.path) as s:
            s.sendall(b"[" + PING + b"]")
            s.shutdown(socket.SHUT_WR)
            return _until_eof(s)

    assert json.loads(await trio.to_thread.run_sync(client)) == [{"jsonrpc": "2.0", "id": 1, "result": "pong"}]


async def test_the_handshake_timeout_with_bytes_buffered_says_frame_not_terminated(
        make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(handshake_timeout_s=0.3)  # type: ignore[misc]

    def client() -> bytes:
        with raw_connect(h.path) as s:
            s.sendall(PING)  # a whole request, but no "\n" and no EOF
            return _until_eof(s)

    (line,) = (await trio.to_thread.run_sync(client)).splitlines()
    resp = json.loads(line)
    assert resp["id"] is None and resp["error"]["code"] == -32600
    assert resp["error"]["data"] == {"reason": "frame_not_terminated"}
    assert "must end with a newline (\\n)" in resp["error"]["message"]
    assert [f["buffered_bytes"] for e, f in h.audit if e == "handshake_timeout"] == [len(PING)]
    h.server.shutdown()


async def test_the_frame_limit_applies_to_a_whole_batch_line(make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(max_frame_bytes=200)  # type: ignore[misc]
    stream = await raw(h.path)
    await stream.send_all(b"[" + b",".join([PING] * 3) + b"]\n")  # 3 x 40 bytes: fits
    (ok,) = await read_lines(stream, 1)
    assert [r["result"] for r in ok] == ["pong"] * 3
    await stream.send_all(b"[" + b",".join([PING] * 6) + b"]\n")  # 246 bytes: over the limit
    (too_large,) = await read_lines(stream, 1)
    assert too_large["error"]["code"] == -32004
    with trio.fail_after(3):
        assert await stream.receive_some(100) == b""  # and the connection is closed
    h.server.shutdown()


async def test_pushes_caused_by_a_batch_follow_its_reply(harness: Harness) -> None:
    stream = await raw(harness.path)
    await stream.send_all(json.dumps([
        {"jsonrpc": "2.0", "id": 1, "method": "get_token", "params": {"instance_id": "me"}},
        {"jsonrpc": "2.0", "id": 2, "method": "subscribe"},
        {"jsonrpc": "2.0", "id": 3, "method": "send", "params": {"to": "me", "content": "to myself"}},
    ]).encode() + b"\n")
    reply, push = await read_lines(stream, 2)
    assert [r["id"] for r in reply] == [1, 2, 3] and all("result" in r for r in reply)
    assert push["method"] == "message" and push["params"]["content"] == "to myself"
    await stream.aclose()


async def test_a_batch_counts_against_max_pending_responses_like_its_members(
        make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(max_pending_responses=16, max_pending_bytes=1 << 30,  # type: ignore[misc]
                                    rate_per_s=1e9, burst=1e9)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.connect(h.path)
    batch = b"[" + b",".join([PING] * 4) + b"]\n"
    data, sent = batch * 50_000, 0
    view = memoryview(data)
    while sent < len(data):  # write until the broker stops reading this connection
        with trio.move_on_after(0.5):
            sent += await sock.send(view[sent : sent + 65536])
            continue
        break
    assert sent < len(data)
    (link,) = h.server._links.values()
    # Four responses per entry: at most 16 responses queued means at most 4 entries, where
    # counting each reply as one response would have let up to 16 + push_window entries in.
    assert 0 < link._outbox.statistics().current_buffer_used <= 4
    sock.close()
    h.server.shutdown()


async def test_the_idle_timeout_with_bytes_buffered_says_frame_not_terminated(
        make_harness: Callable[..., object]) -> None:
    h: Harness = await make_harness(idle_timeout_s=0.3)  # type: ignore[misc]

    def client() -> bytes:
        with raw_connect(h.path) as s:
            s.sendall(b'{"jsonrpc":"2.0","id":0,"method":"ping"}\n' + PING)  # the second lacks "\n"
            return _until_eof(s)

    first, last = (await trio.to_thread.run_sync(client)).splitlines()
    assert json.loads(first)["result"] == "pong"
    assert json.loads(last)["error"]["data"] == {"reason": "frame_not_terminated"}
    assert "idle_timeout_s" in json.loads(last)["error"]["message"]
    h.server.shutdown()
