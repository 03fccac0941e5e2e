"""The link between ``parrot-ipc hook`` and the bridge of the same agent session.

A hook must act as the same instance as its session's bridge, and must not take that instance
over (``get_token`` would end the bridge's session). So the bridge serves its hooks: it listens
on :func:`parrot_ipc.os.procs.hook_socket_path` of its parent's pid (the agent process), admits a
peer only if SO_PEERCRED gives the bridge's uid and ``/proc`` shows the peer descends from that
agent process, and runs the hook's request over its own broker session. Rule and wire format:
``docs/protocol.md``, "Hooks: finding the bridge".

Wire: one JSON object per line each way, one request per connection (at most
:data:`MAX_LINE_BYTES`):

- ``{"op": "status"}`` -> ``{"instance", "waiting"}``;
- ``{"op": "take", "max", "session", "stop"}`` -> ``{"instance", "messages", "waiting", "blocked"}``:
  leases up to ``max`` messages (``receive``); with ``stop``, only while the session ``session``
  has been blocked fewer than ``max_stop_blocks`` times (the Stop-hook loop guard), counting one;
- ``{"op": "ack", "ids"}`` -> ``{"acked"}``; an error is ``{"error": text}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import trio

from ..os.paths import ensure_runtime_dir
from ..os.peer import peer_credentials
from ..os.procs import ancestors, descends_from, hook_socket_path, hooks_dir
from .trio_client import AsyncClient

log = logging.getLogger("parrot_ipc.mcp.hooks")
MAX_LINE_BYTES: Final = 1 << 20
#: Default most Stop-hook blocks per agent session (the loop guard).
MAX_STOP_BLOCKS: Final = 3

Call = Callable[[Callable[[AsyncClient], Awaitable[Any]]], Awaitable[Any]]


class HookService:
    """The bridge side: answers the hooks of its agent session over the bridge's session.

    Args:
        call: the bridge's ``BrokerLink.call`` (runs an op on the live broker connection).
        instance: returns the bridge's current instance id.
        max_stop_blocks: the most times a Stop hook may block one agent session.
    """

    def __init__(self, call: Call, instance: Callable[[], str], max_stop_blocks: int = MAX_STOP_BLOCKS) -> None:
        self._call = call
        self._instance = instance
        self._max_stop_blocks = max_stop_blocks
        self._stop_blocks: dict[str, int] = {}

    async def serve(self, agent_pid: int, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the hook socket of ``agent_pid`` until cancelled; removes it on exit.
        ``task_status.started`` gets the socket path. Raises OSError/StartupError if it cannot bind."""
        directory = hooks_dir()
        ensure_runtime_dir(directory)
        path = hook_socket_path(agent_pid, directory)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead bridge of a reused pid
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lsock.bind(path)
            os.chmod(path, 0o600)
            lsock.listen(16)
            lsock.setblocking(False)
            task_status.started(path)
            async with trio.open_nursery() as nursery:
                while True:
                    await trio.lowlevel.wait_readable(lsock)
                    try:
                        conn, _ = lsock.accept()
                    except BlockingIOError:
                        continue
                    nursery.start_soon(self._serve_one, conn, agent_pid)
        finally:
            lsock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _serve_one(self, conn: socket.socket, agent_pid: int) -> None:
        """Check the peer, then answer one request line. Errors are logged, never raised."""
        with conn:
            cred = peer_credentials(conn)
            if cred.uid != os.geteuid() or not descends_from(cred.pid, agent_pid):
                log.warning("hook socket: refused pid %d uid %d (not of agent %d)", cred.pid, cred.uid, agent_pid)
                return
            tconn = trio.socket.from_stdlib_socket(conn)
            try:
                with trio.fail_after(5):
                    req = json.loads(await _read_line(tconn))
                    out = await self.answer(req)
            except Exception as exc:  # the hook logs it and prints nothing
                out = {"error": f"{type(exc).__name__}: {exc}"}
            data = memoryview(msgspec.json.encode(out) + b"\n")
            with trio.move_on_after(5):
                while data:
                    data = data[await tconn.send(data):]

    async def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        """The answer to one request (see the module's wire format). Raises ParrotError,
        KeyError or ValueError for a request the broker or the format refuses."""
        op = req.get("op")
        if op == "status":
            return {"instance": self._instance(), "waiting": await self._waiting()}
        if op == "ack":
            ids = [str(i) for i in req["ids"]]
            return {"acked": await self._call(lambda c: c.ack(ids)) if ids else 0}
        if op != "take":
            raise ValueError(f"unknown op {op!r}")
        max_count = max(1, min(100, int(req.get("max", 20))))
        session = str(req.get("session", ""))
        if req.get("stop") and self._stop_blocks.get(session, 0) >= self._max_stop_blocks:
            return {"instance": self._instance(), "messages": [], "waiting": await self._waiting(), "blocked": False}
        msgs = await self._call(lambda c: c.receive(max=max_count, wait_s=0))
        if req.get("stop") and msgs:
            self._stop_blocks[session] = self._stop_blocks.get(session, 0) + 1
        return {"instance": self._instance(), "messages": msgspec.to_builtins(msgs),
                "waiting": await self._waiting(), "blocked": bool(req.get("stop") and msgs)}

    async def _waiting(self) -> int:
        """How many messages this instance's mailbox holds (``list_instances``' ``queued``)."""
        rows = await self._call(lambda c: c.list_instances())
        me = self._instance()
        return next((int(r.queued) for r in rows if r.instance_id == me), 0)


async def _read_line(conn: trio.socket.SocketType) -> bytes:
    """One line (without its newline) of at most :data:`MAX_LINE_BYTES`. Raises ValueError
    for a longer one or EOF before the newline."""
    buf = b""
    while b"\n" not in buf:
        chunk = await conn.recv(65536)
        if not chunk or len(buf) > MAX_LINE_BYTES:
            raise ValueError("no complete request line")
        buf += chunk
    return buf.split(b"\n", 1)[0]


# =============================================================================== hook side
def find_bridge(pid: int | None = None) -> str | None:
    """The hook socket of the nearest ancestor of ``pid`` (default: this process) that has one:
    the bridge of this agent session, or None."""
    directory = hooks_dir()
    for anc in ancestors(os.getpid() if pid is None else pid):
        path = hook_socket_path(anc, directory)
        if os.path.exists(path):
            return path
    return None


def ask(path: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Send ``request`` to the bridge at ``path`` and return its answer, within ``timeout_s``
    seconds. Raises OSError (unreachable, timeout) or ValueError (bad answer, or the bridge's
    ``{"error"}``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while b"\n" not in buf and len(buf) <= MAX_LINE_BYTES:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer = json.loads(buf.split(b"\n", 1)[0] or b"null")
    if not isinstance(answer, dict) or "error" in answer:
        raise ValueError(f"the bridge answered {answer!r}")
    return answer
