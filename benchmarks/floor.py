"""The floor: a minimal trio + msgspec NDJSON JSON-RPC server, for the benchmark suite's ratios.

Not parrot-ipc. It answers the same methods with results of the same shape, so the same client
(``parrot_ipc.Client`` / ``AsyncClient``) drives it, but it does nothing else: no peer
credentials, no sessions or tokens, no rate limit, no leases, no store and no commit. ``send``
appends to a plain in-memory deque per name, ``receive`` pops (optionally waiting, like a
long-poll), ``ack`` only counts. Per connection: one task that reads a chunk, splits it into
frames on a bytearray, answers them all, and writes the answers with one ``send_all``.

    python benchmarks/floor.py SOCKET_PATH

Runs until SIGTERM/SIGINT. Used by ``python -m benchmarks``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import deque
from typing import Any

import msgspec
import trio

_EMPTY = msgspec.Raw(b"{}")


class _Req(msgspec.Struct):
    method: str
    id: int | str | None = None
    params: msgspec.Raw = _EMPTY


class _Params(msgspec.Struct):
    to: str = ""
    content: str = ""
    instance_id: str = ""
    token: str = ""
    max: int = 100
    wait_s: float = 0.0
    ids: list[str] = []


class _Msg(msgspec.Struct):
    id: str
    from_: str = msgspec.field(name="from")
    to: str = ""
    content: str = ""
    sent_at: str = ""


class _Resp(msgspec.Struct):
    jsonrpc: str
    id: int | str | None
    result: Any


_REQ = msgspec.json.Decoder(_Req)
_PARAMS = msgspec.json.Decoder(_Params)
_ENC = msgspec.json.Encoder()
_SENT_AT = "2026-01-01T00:00:00Z"
_EXPIRES = "2026-01-02T00:00:00Z"
_SCOPES = ["broadcast", "list", "receive", "rename", "resources", "send"]


class Floor:
    def __init__(self) -> None:
        self.boxes: dict[str, deque[_Msg]] = {}
        self.events: dict[str, trio.Event] = {}
        self.seq = 0

    def _box(self, name: str) -> deque[_Msg]:
        box = self.boxes.get(name)
        if box is None:
            box = self.boxes[name] = deque()
        return box

    async def serve_conn(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        name = "anon"
        out = bytearray()
        try:
            async with stream:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                    start, name = await self._frames(stream, buf, out, name)
                    if start:
                        del buf[:start]
                    if out:
                        await stream.send_all(out)
                        out.clear()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _frames(self, stream: trio.SocketStream, buf: bytearray, out: bytearray,
                      name: str) -> tuple[int, str]:
        """Answer every whole frame in ``buf`` into ``out``; return how many bytes of ``buf``
        were used, and the connection's name (``get_token`` sets it). Called once per read."""
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                return start, name
            frame = bytes(buf[start:nl])
            start = nl + 1
            if not frame.strip():
                continue
            req = _REQ.decode(frame)
            prm = _PARAMS.decode(req.params)
            result: Any
            if req.method == "receive":
                result = await self._receive(stream, out, name, prm)
            else:
                result, name = self._call(req.method, prm, name)
            if req.id is not None:
                _ENC.encode_into(_Resp("2.0", req.id, result), out, len(out))
                out += b"\n"

    def _call(self, m: str, prm: _Params, name: str) -> tuple[Any, str]:
        """The result of every method but ``receive``, and the connection's name after it."""
        if m == "send":
            self.seq += 1
            mid = f"{self.seq:018x}"
            self._box(prm.to).append(_Msg(id=mid, from_=name, to=prm.to, content=prm.content,
                                          sent_at=_SENT_AT))
            ev = self.events.pop(prm.to, None)
            if ev is not None:
                ev.set()
            return {"id": mid, "to": prm.to, "status": "queued"}, name
        if m == "ack":
            return {"acked": len(prm.ids)}, name
        if m == "get_token":
            name = prm.instance_id
            return {"token": "t" * 43, "instance_id": name, "expires_at": _EXPIRES, "scopes": _SCOPES}, name
        if m == "authenticate":
            return {"instance_id": name, "expires_at": _EXPIRES, "scopes": _SCOPES}, name
        if m == "ping":
            return "pong", name
        return None, name

    async def _receive(self, stream: trio.SocketStream, out: bytearray, name: str,
                       prm: _Params) -> dict[str, list[_Msg]]:
        box = self._box(name)
        if not box and prm.wait_s > 0:
            if out:  # answers keep request order: flush the earlier ones first
                await stream.send_all(out)
                out.clear()
            ev = self.events.get(name)
            if ev is None:
                ev = self.events[name] = trio.Event()
            with trio.move_on_after(prm.wait_s):
                await ev.wait()
        got = [box.popleft() for _ in range(min(prm.max, len(box)))]
        return {"messages": got}

async def main(path: str) -> None:
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as lst:
        if os.path.exists(path):
            os.unlink(path)
        await lst.bind(path)
        lst.listen(4096)
        floor = Floor()
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(on_signal)
            listeners = [trio.SocketListener(lst)]
            nursery.start_soon(trio.serve_listeners, floor.serve_conn, listeners)
    os.unlink(path)


if __name__ == "__main__":
    import resource

    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
    trio.run(main, sys.argv[1])
