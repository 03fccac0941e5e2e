"""The client side of the wire, sans I/O: request numbering, frame splitting, error mapping.

Shared by :class:`parrot_ipc.client.blocking.Client` and
:class:`parrot_ipc.client.trio_client.AsyncClient`; neither reads a byte here. Frames are the
NDJSON frames of ``docs/protocol.md`` (one JSON-RPC 2.0 object per line, as the MCP stdio
transport frames them).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

import msgspec

from ..core import protocol as p
from ..errors import BrokerUnavailable, ParrotError, UntrustedBroker
from ..os.paths import client_dir_problem, default_socket_path

#: Bytes asked of the socket per read.
RECV_BYTES: Final = 65536
#: The longest response frame a client accepts, in bytes (64 MiB: a ``receive`` of 1000
#: messages can be large; the broker's own limit on requests is far smaller).
CLIENT_MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
_MESSAGE_DECODER: Final = msgspec.json.Decoder(p.Message)


def error_of(err: p.ErrorObject) -> ParrotError:
    """The :class:`ParrotError` for a JSON-RPC error object (code, ``data.reason``, message, data)."""
    return ParrotError(err.code, str(err.data.get("reason", "")), err.message, err.data)


def unreachable(path: str, exc: OSError) -> BrokerUnavailable:
    """The :class:`BrokerUnavailable` for an ``OSError`` met on the socket at ``path``
    (connect(2), send(2) or recv(2) failing: ENOENT, ECONNREFUSED, EACCES, EPIPE, ...)."""
    return BrokerUnavailable(path, exc.strerror or str(exc))


def check_socket_dir(path: str) -> None:
    """Refuse to connect to ``path`` in the per-user fallback directory ``/tmp/parrot-ipc-UID``
    unless that directory is ours with mode 0700 (:func:`parrot_ipc.os.paths.client_dir_problem`,
    the check tmux(1) makes of ``/tmp/tmux-UID``).

    Raises :class:`BrokerUnavailable` naming the problem.
    """
    problem = client_dir_problem(path)
    if problem is not None:
        raise BrokerUnavailable(path, f"refusing an unsafe socket directory: {problem}")


def unreachable_hint(exc: BrokerUnavailable, socket_path: str) -> str:
    """What to do about ``exc``: for a listener this client does not trust
    (:class:`~parrot_ipc.errors.UntrustedBroker`) its own hint (run ``parrot-ipc doctor``);
    else how to start a broker at ``socket_path`` (:func:`start_hint`)."""
    return exc.hint if isinstance(exc, UntrustedBroker) else start_hint(socket_path)


def start_hint(socket_path: str) -> str:
    """The line that tells a user of an unreachable broker at ``socket_path`` how to start one
    (``--socket`` is named only when the path is not the default)."""
    extra = "" if socket_path == default_socket_path() else f" --socket {socket_path}"
    return f"Is a broker running? Start one with: parrot-ipc serve{extra}"


class Wire:
    """Sans-I/O client side of one connection: numbers requests, splits frames, and sets
    ``message`` notifications aside in :attr:`notifications` (a deque of :class:`p.Message`).

    Raises :class:`parrot_ipc.errors.FrameTooLarge` from :meth:`feed` for a frame over
    :data:`CLIENT_MAX_FRAME_BYTES`.
    """

    def __init__(self) -> None:
        self._next_id = 1
        self._frames = p.FrameBuffer(CLIENT_MAX_FRAME_BYTES)
        self.notifications: deque[p.Message] = deque()

    def request_into(self, method: str, params: dict[str, Any] | None, buf: bytearray) -> int:
        """Append the request frame for ``method`` to ``buf``; return its id (1, 2, ...).

        ``params`` None or empty leaves the ``params`` member out (JSON-RPC 2.0, section 4.2:
        it may be omitted).
        """
        rid = self._next_id
        self._next_id += 1
        p.encode_request_into(buf, rid, method, params or None)
        return rid

    def feed(self, data: bytes) -> list[p.Incoming]:
        """Frames completed by ``data``: responses are returned in order, ``message``
        notifications are queued on :attr:`notifications`, other notifications dropped."""
        out = []
        for frame in self._frames.feed(data):
            inc = p.INCOMING_DECODER.decode(frame)
            if inc.is_notification:
                if inc.method == "message":
                    self.notifications.append(_MESSAGE_DECODER.decode(inc.params))
            else:
                out.append(inc)
        return out
