"""The blocking client, :class:`Client` (standard-library sockets); its trio twin is
:class:`parrot_ipc.client.trio_client.AsyncClient`.

Both speak protocol v1 (``docs/protocol.md``) and get their methods (``ping``, ``send``,
``receive``, ... ``list_sessions``) from one table, :class:`parrot_ipc.client.spec.Methods`,
which returns the typed result Structs of :mod:`parrot_ipc.core.protocol`. A refusal by the
broker raises :class:`ParrotError` with the JSON-RPC code, ``data.reason`` and message; a broker
that cannot be reached raises :class:`BrokerUnavailable` (a subclass).
"""

from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any, TypeVar

from ..core import protocol as p
from ..errors import BrokerUnavailable, UntrustedBroker
from ..os.paths import default_socket_path
from .spec import BlockingCalls, Call, raw_call
from .trust import verify_broker
from .wire import RECV_BYTES, Wire, check_socket_dir, error_of, unreachable

R = TypeVar("R")
class Client(BlockingCalls):
    """A blocking client on one connection. Not thread-safe; use one per thread.

    Args:
        socket_path: the broker's socket (default: :func:`parrot_ipc.os.paths.default_socket_path`).
        timeout_s: how long to wait for each response, in seconds (a long-poll ``receive``
            adds its ``wait_s``).
        broker_user: the user trusted as the broker besides root and ourselves (default: see
            :mod:`parrot_ipc.client.trust`).

    Raises:
        BrokerUnavailable: on connect, if the socket is missing, refuses, or denies access.
        UntrustedBroker: on connect, if the listener is not root, us or the broker user
            (SO_PEERCRED, checked before anything is sent).

    Use as a context manager, or call :meth:`close`. The protocol's methods (``ping``,
    ``get_token``, ``send``, ... and the admin ``list_sessions``, ``revoke_session``) come from
    :class:`parrot_ipc.client.spec.Methods`; each blocks until its response.
    """

    def __init__(self, socket_path: str | None = None, *, timeout_s: float = 30.0,
                 broker_user: str | None = None) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout_s = timeout_s
        self._wire = Wire()
        check_socket_dir(self.socket_path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout_s)
        try:
            self._sock.connect(self.socket_path)
            verify_broker(self._sock, self.socket_path, broker_user)  # before a byte is sent
        except OSError as exc:
            self._sock.close()
            raise unreachable(self.socket_path, exc) from None
        except UntrustedBroker:
            self._sock.close()
            raise
        self._pending: deque[p.Incoming] = deque()
        self._timeout: float | None = timeout_s  # what the socket is set to now
        self._out = bytearray()  # the request being written, reused

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent). The broker ends the session's binding to it."""
        self._sock.close()

    def _read(self, timeout_s: float | None) -> None:
        if timeout_s != self._timeout:  # settimeout costs two fcntl(2) calls: only on a change
            self._sock.settimeout(timeout_s)
            self._timeout = timeout_s
        try:
            data = self._sock.recv(RECV_BYTES)
        except TimeoutError:
            raise
        except OSError as exc:
            raise unreachable(self.socket_path, exc) from None
        if not data:
            raise BrokerUnavailable(self.socket_path, "the broker closed the connection")
        self._pending.extend(self._wire.feed(data))

    def _run(self, call: Call[R], timeout_s: float | None = None) -> R:
        out = self._out
        out.clear()
        rid = self._wire.request_into(call.method, call.params, out)
        try:
            self._sock.sendall(out)
        except OSError as exc:  # a timeout may leave part of the frame sent: the stream is torn
            self._sock.close()
            raise unreachable(self.socket_path, exc) from None
        while True:
            while self._pending:
                inc = self._pending.popleft()
                if inc.id == rid or inc.id is None:
                    if inc.error is not None:
                        raise error_of(inc.error)
                    return call.decode(inc.result)
            self._read(timeout_s or self.timeout_s + call.wait_s)

    def call(self, method: str, params: dict[str, Any] | None = None, result_type: Any = Any,
             *, timeout_s: float | None = None) -> Any:
        """Send one request for any method by name and return its result decoded as
        ``result_type`` (default: plain JSON values). Prefer the typed methods.

        Raises :class:`ParrotError` for an error response, :class:`BrokerUnavailable` if the
        connection breaks, and :class:`TimeoutError` after ``timeout_s`` seconds (default the
        client's ``timeout_s``).
        """
        return self._run(raw_call(method, params, result_type), timeout_s)

    def next_message(self, timeout_s: float | None = None) -> p.Message | None:
        """The next pushed message after ``subscribe``, or None after ``timeout_s`` seconds
        (None: wait for ever). Raises :class:`BrokerUnavailable` if the connection breaks."""
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
