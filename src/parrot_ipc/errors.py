"""parrot-ipc's one exception hierarchy, and the JSON-RPC error codes.

Every exception the package raises on purpose derives from :class:`ParrotIpcError`. Each class
carries two numbers as class attributes:

- ``rpc_code``: the JSON-RPC error code it becomes on the wire, or ``None`` for errors that
  never reach the wire (a startup refusal, a bad session file);
- ``exit_code``: the ``parrot-ipc`` CLI's exit code for it (the CLI's module docstring lists
  them: 0 ok, 1 the broker said no or must not start, 2 usage or bad config, 3 the broker could
  not be reached, 4 the session file is missing or unsafe).

Source for the codes: the JSON-RPC 2.0 specification, section 5.1 (codes -32768..-32000 are
reserved: -32700 and -32600..-32603 are the spec's own; -32001..-32007 are parrot-ipc's server
errors, listed in ``docs/protocol.md``).

This module imports nothing but the standard library's ``enum`` and ``typing``, so every layer,
the sans-I/O core included, may import it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar, Final

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_SESSION: Final = 4


class ErrorCode(IntEnum):
    """Every error code the broker sends. Stable: clients switch on these numbers."""

    PARSE_ERROR = -32700
    """The frame is not valid JSON (JSON-RPC 2.0 spec, section 5.1)."""
    INVALID_REQUEST = -32600
    """The JSON is not a valid Request object (JSON-RPC 2.0 spec, section 5.1)."""
    METHOD_NOT_FOUND = -32601
    """No such method in protocol v1 (JSON-RPC 2.0 spec, section 5.1)."""
    INVALID_PARAMS = -32602
    """The method's params are missing or of the wrong shape (JSON-RPC 2.0 spec, section 5.1)."""
    INTERNAL_ERROR = -32603
    """The broker failed while handling the request (JSON-RPC 2.0 spec, section 5.1)."""
    UNAUTHENTICATED = -32001
    """No session on this connection, or a bad, expired, revoked or other-UID token
    (``docs/protocol.md``, Error codes)."""
    FORBIDDEN = -32002
    """The peer policy refuses this peer, or the session lacks the scope
    (``docs/protocol.md``, Error codes)."""
    RATE_LIMITED = -32003
    """Too fast or too many; ``data.retry_after_s`` says when to retry where it applies
    (``docs/protocol.md``, Error codes)."""
    FRAME_TOO_LARGE = -32004
    """The frame is over ``max_frame_bytes``; the connection closes (``docs/protocol.md``)."""
    NOT_FOUND = -32005
    """An unknown resource, or one that must not be served (``docs/protocol.md``)."""
    CONFLICT = -32006
    """The instance is held by another UID, or the rename target is taken
    (``docs/protocol.md``, Error codes)."""
    MAILBOX_FULL = -32007
    """The recipient's mailbox is at its bound (``docs/protocol.md``, Error codes)."""


class ParrotIpcError(Exception):
    """The base of every exception parrot-ipc raises on purpose.

    Class attributes:
        rpc_code: the JSON-RPC error code this becomes on the wire (None: never sent).
        exit_code: the CLI's exit code when this ends a command.
    """

    rpc_code: ClassVar[int | None] = None
    exit_code: ClassVar[int] = EXIT_REFUSED


# --------------------------------------------------------------------------- broker side
class RpcError(ParrotIpcError):
    """A request the broker refuses, carried to the wire as a JSON-RPC error object.

    Args:
        code: the JSON-RPC error code (see :class:`ErrorCode`); also ``self.rpc_code``.
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


class FrameTooLarge(ParrotIpcError):
    """A frame (without its ``\\n``) is longer than ``max_frame_bytes``: answer -32004, close.

    ``args[0]`` is the frame's size in bytes so far (an int).
    """

    rpc_code = ErrorCode.FRAME_TOO_LARGE


class ResourceRefused(ParrotIpcError):
    """Raised by a resource reader (injected into the broker) for a resource file that exists
    but must not be served: a symlink, not a regular file, owned by another user, writable by
    group or others, too large, or not UTF-8. ``str(exc)`` says which, for the broker's log.
    """

    rpc_code = ErrorCode.NOT_FOUND


class PeerGone(ParrotIpcError):
    """The peer process exited (and was reaped) before the broker could pin it (SO_PEERPIDFD
    answered ESRCH; socket(7))."""


class SlowReader(ParrotIpcError):
    """A peer left its output unread past ``max_pending_bytes`` for ``idle_timeout_s``: the
    shell closes the connection."""


class UnsafeFile(ParrotIpcError):
    """A file or directory opened by :func:`parrot_ipc.os.files.open_checked` breaks its rule
    (wrong type, owner or mode, or more than one hard link). ``str(exc)`` names the path and
    what was found; callers re-raise it as their own error (StartupError, ConfigError, ...)."""


class StartupError(ParrotIpcError):
    """The broker must not start. ``str(exc)`` is one line for the operator: path and cause."""

    exit_code = EXIT_REFUSED


class ConfigError(ParrotIpcError, ValueError):
    """The config is unreadable, unsafe or invalid; ``str(exc)`` is one line naming file and key."""

    exit_code = EXIT_USAGE


# --------------------------------------------------------------------------- client side
class ParrotError(ParrotIpcError):
    """The broker refused a request (or, for :class:`BrokerUnavailable`, could not be reached).

    Attributes:
        code: the JSON-RPC error code (:class:`ErrorCode`); 0 for unreachable.
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

    @property
    def unauthenticated(self) -> bool:
        """True when the broker answered -32001: the session token is missing, expired or revoked."""
        return self.code == ErrorCode.UNAUTHENTICATED

    def __str__(self) -> str:
        return f"{self.message} (code {self.code}, reason {self.reason})"


class BrokerUnavailable(ParrotError):
    """No broker could be reached at ``socket_path`` (missing, refused, no permission, or gone)."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, socket_path: str, cause: str) -> None:
        super().__init__(0, "broker_unavailable", f"cannot reach the broker at {socket_path}: {cause}")
        self.socket_path = socket_path
        self.cause = cause


class UntrustedBroker(BrokerUnavailable):
    """The process listening at ``socket_path`` is not a broker this client trusts: its UID
    (SO_PEERCRED, read before anything is sent) is not root, the client's own, nor the expected
    broker user. Nothing was sent to it. CLI exit code 3.

    Attributes:
        listener_uid, listener_pid: who was listening (SO_PEERCRED; unix(7)).
        hint: what to run next (``parrot-ipc doctor``).
    """

    def __init__(self, socket_path: str, listener_uid: int, listener_pid: int, cause: str) -> None:
        ParrotError.__init__(self, 0, "broker_not_trusted", f"refusing the broker at {socket_path}: {cause}",
                             {"reason": "broker_not_trusted", "listener_uid": listener_uid,
                              "listener_pid": listener_pid})
        self.socket_path, self.cause = socket_path, cause
        self.listener_uid, self.listener_pid = listener_uid, listener_pid
        self.hint = ("Run 'parrot-ipc doctor' to see who owns the socket. If that user really runs your "
                     "broker, name it in PARROT_IPC_BROKER_USER or [server] broker_user.")


class SessionFileError(ParrotIpcError):
    """The session file is missing, unreadable or unsafe; ``str(exc)`` says what to do."""

    exit_code = EXIT_SESSION


class ToolError(ParrotIpcError):
    """An MCP tool call that failed; ``str(exc)`` is the text the model sees (``isError``; MCP
    specification, Tools, "Error Handling")."""


class SetupError(ParrotIpcError):
    """``parrot-ipc setup`` cannot merge a settings file (not JSON, or not a JSON object where
    one is needed); ``str(exc)`` names the file and says how to fix it. Nothing was written."""

    exit_code = EXIT_USAGE
