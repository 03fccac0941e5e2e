"""Client library: :class:`Client` (blocking, standard-library sockets) and :class:`AsyncClient` (trio).

Both speak protocol v1 (``docs/protocol.md``) and return the typed result Structs of
:mod:`parrot_ipc.core.protocol`. A refusal by the broker raises :class:`ParrotError` with the
JSON-RPC code, ``data.reason`` and message; a broker that cannot be reached raises
:class:`BrokerUnavailable` (a subclass).
"""

from __future__ import annotations

import math
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Final, TypeVar

import msgspec
import trio

from .core import protocol as p
from .oslayer import default_socket_path

T = TypeVar("T")
_RECV_BYTES: Final = 65536
_CLIENT_MAX_FRAME: Final = 64 * 1024 * 1024
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}
_MESSAGE_DECODER: Final = msgspec.json.Decoder(p.Message)


class ParrotError(Exception):
    """The broker refused a request (or, for :class:`BrokerUnavailable`, could not be reached).

    Attributes:
        code: the JSON-RPC error code (``parrot_ipc.core.ErrorCode``); 0 for unreachable.
        reason: ``error.data.reason``, a short machine-readable word.
        message: the broker's sentence for people.
        data: the whole ``error.data`` object.
    """

    def __init__(self, code: int, reason: str, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.data = data or {"reason": reason}

    def __str__(self) -> str:
        return f"{self.message} (code {self.code}, reason {self.reason})"


class BrokerUnavailable(ParrotError):
    """No broker could be reached at ``socket_path`` (missing, refused, no permission, or gone)."""

    def __init__(self, socket_path: str, cause: str) -> None:
        super().__init__(0, "broker_unavailable", f"cannot reach the broker at {socket_path}: {cause}")
        self.socket_path = socket_path
        self.cause = cause


def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    dec = _DECODERS.get(tp)
    if dec is None:
        dec = _DECODERS[tp] = msgspec.json.Decoder(tp)
    return dec


def _error_of(err: p.ErrorObject) -> ParrotError:
    return ParrotError(err.code, str(err.data.get("reason", "")), err.message, err.data)


def _params(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _unreachable(path: str, exc: OSError) -> BrokerUnavailable:
    return BrokerUnavailable(path, exc.strerror or str(exc))


class _Wire:
    """Sans-I/O client side: numbers requests, splits frames, sets notifications aside."""

    def __init__(self) -> None:
        self._next_id = 1
        self._frames = p.FrameBuffer(_CLIENT_MAX_FRAME)
        self.notifications: deque[p.Message] = deque()

    def request(self, method: str, params: dict[str, Any] | None) -> tuple[int, bytes]:
        rid = self._next_id
        self._next_id += 1
        return rid, p.encode_request(rid, method, params or None)

    def feed(self, data: bytes) -> list[p.Incoming]:
        """Frames in ``data``: responses are returned, ``message`` notifications are queued."""
        out = []
        for frame in self._frames.feed(data):
            inc = p.INCOMING_DECODER.decode(frame)
            if inc.is_notification:
                if inc.method == "message":
                    self.notifications.append(_MESSAGE_DECODER.decode(inc.params))
            else:
                out.append(inc)
        return out


def _result(inc: p.Incoming, tp: Any) -> Any:
    if inc.error is not None:
        raise _error_of(inc.error)
    return _decoder(tp).decode(inc.result)


# =============================================================================== blocking
class Client:
    """A blocking client on one connection. Not thread-safe; use one per thread.

    Args:
        socket_path: the broker's socket (default: :func:`parrot_ipc.oslayer.default_socket_path`).
        timeout_s: how long to wait for each response, in seconds (a long-poll ``receive``
            adds its ``wait_s``).

    Raises:
        BrokerUnavailable: on connect, if the socket is missing, refuses, or denies access.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, socket_path: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout_s = timeout_s
        self._wire = _Wire()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(self.socket_path)
        except OSError as exc:
            self._sock.close()
            raise _unreachable(self.socket_path, exc) from None
        self._pending: deque[p.Incoming] = deque()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _read(self, timeout_s: float | None) -> None:
        self._sock.settimeout(timeout_s)
        try:
            data = self._sock.recv(_RECV_BYTES)
        except TimeoutError:
            raise
        except OSError as exc:
            raise _unreachable(self.socket_path, exc) from None
        if not data:
            raise BrokerUnavailable(self.socket_path, "the broker closed the connection")
        self._pending.extend(self._wire.feed(data))

    def call(self, method: str, params: dict[str, Any] | None = None, result_type: Any = Any,
             *, timeout_s: float | None = None) -> Any:
        """Send one request and return its result decoded as ``result_type``.

        Raises :class:`ParrotError` for an error response, :class:`BrokerUnavailable` if the
        connection breaks, and :class:`TimeoutError` after ``timeout_s``.
        """
        rid, frame = self._wire.request(method, params)
        try:
            self._sock.sendall(frame)
        except OSError as exc:
            raise _unreachable(self.socket_path, exc) from None
        while True:
            while self._pending:
                inc = self._pending.popleft()
                if inc.id == rid or inc.id is None:
                    return _result(inc, result_type)
            self._read(timeout_s or self.timeout_s)

    # -- typed methods (docs/protocol.md, Methods) --------------------------------------
    def ping(self) -> str:
        return str(self.call("ping", None, str))

    def get_token(self, instance_id: str, *, shared_secret_proof: str | None = None) -> p.TokenResult:
        params = _params(instance_id=instance_id, shared_secret_proof=shared_secret_proof)
        return self.call("get_token", params, p.TokenResult)  # type: ignore[no-any-return]

    def authenticate(self, token: str) -> p.AuthResult:
        return self.call("authenticate", {"token": token}, p.AuthResult)  # type: ignore[no-any-return]

    def whoami(self) -> p.WhoamiResult:
        return self.call("whoami", None, p.WhoamiResult)  # type: ignore[no-any-return]

    def send(self, to: str, content: str, *, data: dict[str, Any] | None = None,
             idempotency_key: str | None = None) -> p.SendResult:
        params = _params(to=to, content=content, data=data, idempotency_key=idempotency_key)
        return self.call("send", params, p.SendResult)  # type: ignore[no-any-return]

    def broadcast(self, content: str, *, data: dict[str, Any] | None = None) -> p.BroadcastResult:
        return self.call("broadcast", _params(content=content, data=data), p.BroadcastResult)  # type: ignore[no-any-return]

    def receive(self, *, max: int = 100, wait_s: float = 0.0) -> list[p.Message]:
        res = self.call("receive", {"max": max, "wait_s": wait_s}, p.ReceiveResult,
                        timeout_s=self.timeout_s + wait_s)
        return list(res.messages)

    def ack(self, ids: list[str]) -> int:
        return int(self.call("ack", {"ids": ids}, p.AckResult).acked)

    def list_instances(self) -> list[p.InstanceInfo]:
        return list(self.call("list_instances", None, p.ListInstancesResult).instances)

    def rename(self, new_id: str) -> p.RenameResult:
        return self.call("rename", {"new_id": new_id}, p.RenameResult)  # type: ignore[no-any-return]

    def subscribe(self) -> bool:
        return bool(self.call("subscribe", None, p.SubscribeResult).subscribed)

    def revoke(self) -> bool:
        return bool(self.call("revoke", None, p.RevokeResult).revoked)

    def next_message(self, timeout_s: float | None = None) -> p.Message | None:
        """The next pushed message after :meth:`subscribe`, or None after ``timeout_s`` seconds."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._wire.notifications:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                self._read(remaining)
            except TimeoutError:
                return None
        return self._wire.notifications.popleft()


# =============================================================================== trio
class AsyncClient:
    """A trio client on one connection; many tasks may call it at once (requests pipeline).

    Use ``async with AsyncClient(path) as client:``. A background task reads responses and
    routes each to its caller; ``message`` notifications go to :meth:`messages`.

    Raises:
        BrokerUnavailable: on enter, if the broker cannot be reached; from a call if the
            connection breaks.
    """

    def __init__(self, socket_path: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout_s = timeout_s
        self._wire = _Wire()
        self._waiting: dict[int, trio.MemorySendChannel[p.Incoming]] = {}
        self._note_send, self._note_recv = trio.open_memory_channel[p.Message](math.inf)
        self._stream: trio.SocketStream | None = None
        self._nursery_cm: Any = None
        self._broken: BrokerUnavailable | None = None
        self._send_lock = trio.Lock()

    async def __aenter__(self) -> AsyncClient:
        try:
            self._stream = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise _unreachable(self.socket_path, exc) from None
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._read_loop)
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._stream is not None
        await self._stream.aclose()
        return bool(await self._nursery_cm.__aexit__(et, ev, tb))

    async def _read_loop(self) -> None:
        assert self._stream is not None
        cause = "the broker closed the connection"
        try:
            while True:
                data = await self._stream.receive_some(_RECV_BYTES)
                if not data:
                    break
                for inc in self._wire.feed(data):
                    self._route(inc)
                while self._wire.notifications:
                    self._note_send.send_nowait(self._wire.notifications.popleft())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = str(exc) or cause
        self._broken = BrokerUnavailable(self.socket_path, cause)
        for ch in self._waiting.values():
            ch.close()
        self._note_send.close()

    def _route(self, inc: p.Incoming) -> None:
        if inc.id is None:  # an error the broker could not tie to a request: fail every caller
            for waiter in list(self._waiting.values()):
                waiter.send_nowait(inc)
            return
        ch = self._waiting.get(inc.id) if isinstance(inc.id, int) else None
        if ch is not None:
            ch.send_nowait(inc)

    async def call(self, method: str, params: dict[str, Any] | None = None, result_type: Any = Any,
                   *, timeout_s: float | None = None) -> Any:
        """Send one request and await its result decoded as ``result_type``.

        Raises :class:`ParrotError`, :class:`BrokerUnavailable`, or :class:`trio.TooSlowError`
        after ``timeout_s``.
        """
        if self._broken is not None:
            raise self._broken
        assert self._stream is not None
        rid, frame = self._wire.request(method, params)
        send, recv = trio.open_memory_channel[p.Incoming](1)
        self._waiting[rid] = send
        try:
            try:
                async with self._send_lock:
                    await self._stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise BrokerUnavailable(self.socket_path, str(exc) or "connection lost") from None
            with trio.fail_after(timeout_s or self.timeout_s):
                try:
                    inc = await recv.receive()
                except trio.EndOfChannel:
                    raise self._broken or BrokerUnavailable(self.socket_path, "connection lost") from None
        finally:
            del self._waiting[rid]
        return _result(inc, result_type)

    async def messages(self) -> AsyncIterator[p.Message]:
        """Pushed messages after :meth:`subscribe`, until the connection closes."""
        async for msg in self._note_recv:
            yield msg

    # -- typed methods (docs/protocol.md, Methods) --------------------------------------
    async def ping(self) -> str:
        return str(await self.call("ping", None, str))

    async def get_token(self, instance_id: str, *, shared_secret_proof: str | None = None) -> p.TokenResult:
        params = _params(instance_id=instance_id, shared_secret_proof=shared_secret_proof)
        return await self.call("get_token", params, p.TokenResult)  # type: ignore[no-any-return]

    async def authenticate(self, token: str) -> p.AuthResult:
        return await self.call("authenticate", {"token": token}, p.AuthResult)  # type: ignore[no-any-return]

    async def whoami(self) -> p.WhoamiResult:
        return await self.call("whoami", None, p.WhoamiResult)  # type: ignore[no-any-return]

    async def send(self, to: str, content: str, *, data: dict[str, Any] | None = None,
                   idempotency_key: str | None = None) -> p.SendResult:
        params = _params(to=to, content=content, data=data, idempotency_key=idempotency_key)
        return await self.call("send", params, p.SendResult)  # type: ignore[no-any-return]

    async def broadcast(self, content: str, *, data: dict[str, Any] | None = None) -> p.BroadcastResult:
        return await self.call("broadcast", _params(content=content, data=data), p.BroadcastResult)  # type: ignore[no-any-return]

    async def receive(self, *, max: int = 100, wait_s: float = 0.0) -> list[p.Message]:
        res = await self.call("receive", {"max": max, "wait_s": wait_s}, p.ReceiveResult,
                              timeout_s=self.timeout_s + wait_s)
        return list(res.messages)

    async def ack(self, ids: list[str]) -> int:
        return int((await self.call("ack", {"ids": ids}, p.AckResult)).acked)

    async def list_instances(self) -> list[p.InstanceInfo]:
        return list((await self.call("list_instances", None, p.ListInstancesResult)).instances)

    async def rename(self, new_id: str) -> p.RenameResult:
        return await self.call("rename", {"new_id": new_id}, p.RenameResult)  # type: ignore[no-any-return]

    async def subscribe(self) -> bool:
        return bool((await self.call("subscribe", None, p.SubscribeResult)).subscribed)

    async def revoke(self) -> bool:
        return bool((await self.call("revoke", None, p.RevokeResult)).revoked)
