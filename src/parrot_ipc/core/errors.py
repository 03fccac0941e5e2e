"""JSON-RPC error codes and the one exception the core raises for a refused request.

Source: the JSON-RPC 2.0 specification (section 5.1, codes -32768..-32000 are reserved:
-32700 and -32600..-32603 are the spec's own; -32001..-32007 are parrot-ipc's server errors,
listed in ``docs/protocol.md``).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    """Every error code the broker sends. Stable: clients switch on these numbers."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    UNAUTHENTICATED = -32001
    FORBIDDEN = -32002
    RATE_LIMITED = -32003
    FRAME_TOO_LARGE = -32004
    NOT_FOUND = -32005
    CONFLICT = -32006
    MAILBOX_FULL = -32007


class RpcError(Exception):
    """A request the broker refuses, carried to the wire as a JSON-RPC error object.

    Args:
        code: the JSON-RPC error code (see :class:`ErrorCode`).
        reason: a short machine-readable word, sent as ``error.data.reason``.
        message: one sentence for people. Never a token, a secret or message content.
        **data: further members of ``error.data`` (for example ``retry_after_s``).

    This is the *peer's* fault (or policy's decision), never a bug: bugs surface as any
    other exception and become -32603 at the edge of :class:`parrot_ipc.core.broker.Broker`.
    """

    def __init__(self, code: ErrorCode, reason: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.data: dict[str, Any] = {"reason": reason, **data}


class ResourceRefused(Exception):
    """Raised by a resource reader (injected into the broker) for a resource file that exists
    but must not be served: a symlink, not a regular file, owned by another user, writable by
    group or others, too large, or not UTF-8. ``str(exc)`` says which, for the broker's log.
    """
