"""Client library: :class:`Client` (blocking, standard-library sockets); the trio twin is
:class:`parrot_ipc.async_client.AsyncClient`.

Both speak protocol v1 (``docs/protocol.md``) and return the typed result Structs of
:mod:`parrot_ipc.core.protocol`. A refusal by the broker raises :class:`ParrotError` with the
JSON-RPC code, ``data.reason`` and message; a broker that cannot be reached raises
:class:`BrokerUnavailable` (a subclass).
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any, Final, TypeVar

import msgspec

from ..core import protocol as p
from ..errors import BrokerUnavailable, ParrotError
from ..os.paths import default_socket_path

T = TypeVar("T")
_RECV_BYTES: Final = 65536
_CLIENT_MAX_FRAME: Final = 64 * 1024 * 1024
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}
_MESSAGE_DECODER: Final = msgspec.json.Decoder(p.Message)


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

    def request_into(self, method: str, params: dict[str, Any] | None, buf: bytearray) -> int:
        """Like :meth:`request`, appending the frame to ``buf``; returns the request id."""
        rid = self._next_id
        self._next_id += 1
        p.encode_request_into(buf, rid, method, params or None)
        return rid

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
        socket_path: the broker's socket (default: :func:`parrot_ipc.os_paths.default_socket_path`).
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
        self._timeout: float | None = timeout_s  # what the socket is set to now
        self._out = bytearray()  # the request being written, reused

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _read(self, timeout_s: float | None) -> None:
        if timeout_s != self._timeout:  # settimeout costs two fcntl(2) calls: only on a change
            self._sock.settimeout(timeout_s)
            self._timeout = timeout_s
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
        out = self._out
        out.clear()
        rid = self._wire.request_into(method, params, out)
        try:
            self._sock.sendall(out)
        except OSError as exc:  # a timeout may leave part of the frame sent: the stream is torn
            self._sock.close()
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

    def get_resource(self, name: str) -> p.ResourceResult:
        """A protected resource: ``{name, content, sha256}`` (scope ``resources``; -32005 if unknown)."""
        return self.call("get_resource", {"name": name}, p.ResourceResult)  # type: ignore[no-any-return]

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
