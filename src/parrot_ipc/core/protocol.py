"""Wire protocol v1: NDJSON framing and the msgspec schema of every request, result and error.

Source: ``docs/protocol.md`` (carried forward from ``shared/design/protocol.md``) and the
JSON-RPC 2.0 specification. Framing is the MCP stdio transport's: one JSON object per line,
UTF-8, terminated by a single ``\\n``.

Everything here is pure: bytes in, Structs out, and back. Decoders and encoders are built once
at import and reused.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType, field

from ..errors import ErrorCode, FrameTooLarge

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_FRAME_BYTES: Final = 65536

INSTANCE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
InstanceId = Annotated[str, Meta(pattern=INSTANCE_ID_PATTERN)]
#: A resource name: one file name in ``resources_dir``, never a path (no ``/``, no leading dot).
RESOURCE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ResourceName = Annotated[str, Meta(pattern=RESOURCE_NAME_PATTERN)]
RequestId = int | str | None
_EMPTY_OBJECT: Final = Raw(b"{}")
_ABSENT: Final = Raw(b"")


# --------------------------------------------------------------------------- framing
class FrameBuffer:
    """Splits a byte stream into NDJSON frames, holding at most ``max_frame_bytes`` of a partial one.

    Args:
        max_frame_bytes: the longest frame allowed, in bytes, not counting its ``\\n``.

    ``feed(data)`` returns the complete frames (``\\n`` stripped, empty lines dropped) and keeps
    the tail. It raises :class:`FrameTooLarge` as soon as a complete frame or the unterminated
    tail exceeds the limit, so the caller never buffers more than ``max_frame_bytes`` plus one
    read.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()  # the unterminated tail; grows in place (no copy per read)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame whose ``\\n`` has not arrived yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the frames it completes. Raises :class:`FrameTooLarge`.

        Linear in the bytes fed: a partial frame is appended to a bytearray in place, and each
        byte is copied a bounded number of times however many reads a frame takes.
        """
        limit, buf = self.max_frame_bytes, self._buf
        out: list[bytes] = []
        if buf:
            nl = data.find(b"\n")
            if nl < 0:
                size = len(buf) + len(data)
                if size > limit:
                    buf.clear()
                    raise FrameTooLarge(size)
                buf += data
                return out
            size = len(buf) + nl
            if size > limit:
                buf.clear()
                raise FrameTooLarge(size)
            buf += data[:nl]
            first = bytes(buf)
            buf.clear()
            if first and not first.isspace():
                out.append(first)
            data = data[nl + 1:]
        if not data:
            return out
        if b"\n" not in data:
            if len(data) > limit:
                raise FrameTooLarge(len(data))
            buf += data
            return out
        *frames, tail = data.split(b"\n")
        if len(tail) > limit:
            raise FrameTooLarge(len(tail))
        for frame in frames:
            if len(frame) > limit:
                raise FrameTooLarge(len(frame))
            if frame and not frame.isspace():
                out.append(frame)
        if tail:
            buf += tail
        return out


# --------------------------------------------------------------------------- envelope
class Request(Struct, kw_only=True):
    """A JSON-RPC 2.0 request or notification, with ``params`` left undecoded.

    ``id`` is ``UNSET`` for a notification (no ``id`` member), which gets no response.
    ``params`` stays a :class:`msgspec.Raw` until the method is known, so an unknown method
    (-32601) is told apart from bad params (-32602).
    """

    jsonrpc: Literal["2.0"]
    method: str
    id: RequestId | UnsetType = UNSET
    params: Raw = field(default_factory=lambda: _EMPTY_OBJECT)


class _IdOnly(Struct):
    id: Any = None


class ErrorObject(Struct, omit_defaults=True):
    """JSON-RPC error object. ``data.reason`` is always present on broker errors."""

    code: int
    message: str
    data: dict[str, Any] = {}


class Response(Struct, kw_only=True):
    jsonrpc: str = "2.0"
    id: RequestId
    result: Any


class ErrorResponse(Struct, kw_only=True):
    jsonrpc: str = "2.0"
    id: RequestId
    error: ErrorObject


class Notification(Struct, kw_only=True):
    jsonrpc: str = "2.0"
    method: str
    params: Any


class Incoming(Struct, kw_only=True):
    """What a *client* reads: a response (``id`` + ``result`` or ``error``) or a notification."""

    jsonrpc: str = "2.0"
    id: RequestId = None
    result: Raw = field(default_factory=lambda: _ABSENT)
    error: ErrorObject | None = None
    method: str | None = None
    params: Raw = field(default_factory=lambda: _ABSENT)

    @property
    def is_notification(self) -> bool:
        return self.method is not None and self.error is None and len(self.result) == 0


# --------------------------------------------------------------------------- params
class _Params(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for params: unknown fields are -32602 (``docs/protocol.md``, Envelope)."""


class NoParams(_Params):
    pass


class GetTokenParams(_Params):
    instance_id: InstanceId
    shared_secret_proof: Annotated[str, Meta(max_length=128)] | None = None


class AuthenticateParams(_Params):
    token: Annotated[str, Meta(min_length=1, max_length=256)]


class SendParams(_Params):
    to: InstanceId
    content: str
    data: dict[str, Any] | None = None
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    # Accepted and ignored: the sender is always the session (claude-ipc compatibility).
    from_: Any = field(default=None, name="from")
    from_id: Any = None


class BroadcastParams(_Params):
    content: str
    data: dict[str, Any] | None = None


class ReceiveParams(_Params):
    max: Annotated[int, Meta(ge=1, le=1000)] = 100
    wait_s: Annotated[float, Meta(ge=0, le=300)] = 0.0


class AckParams(_Params):
    ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=1000)]


class RenameParams(_Params):
    new_id: InstanceId


class RevokeSessionParams(_Params):
    instance_id: InstanceId


class GetResourceParams(_Params):
    name: ResourceName


# --------------------------------------------------------------------------- results
class Message(Struct, kw_only=True, omit_defaults=True):
    """One message. ``id`` sorts by arrival; ``sent_at`` is RFC 3339 UTC."""

    id: str
    from_: str = field(name="from")
    to: str
    content: str
    data: dict[str, Any] | UnsetType = UNSET
    sent_at: str


class TokenResult(Struct, kw_only=True):
    token: str
    instance_id: str
    expires_at: str
    scopes: list[str]


class AuthResult(Struct, kw_only=True):
    instance_id: str
    expires_at: str
    scopes: list[str]


class WhoamiResult(Struct, kw_only=True):
    instance_id: str
    uid: int
    gid: int
    pid: int
    scopes: list[str]
    expires_at: str


class SendResult(Struct, kw_only=True):
    id: str
    to: str
    status: Literal["queued", "forwarded"]


class BroadcastResult(Struct, kw_only=True):
    id: str
    recipients: list[str]


class ReceiveResult(Struct, kw_only=True):
    messages: list[Message]


class AckResult(Struct, kw_only=True):
    acked: int


class InstanceInfo(Struct, kw_only=True):
    instance_id: str
    online: bool
    last_seen: str
    queued: int


class ListInstancesResult(Struct, kw_only=True):
    instances: list[InstanceInfo]


class RenameResult(Struct, kw_only=True):
    instance_id: str
    previous_id: str


class SubscribeResult(Struct, kw_only=True):
    subscribed: bool


class RevokeResult(Struct, kw_only=True):
    revoked: bool


class ResourceResult(Struct, kw_only=True):
    """``get_resource``: the resource's text (UTF-8) and the hex SHA-256 of its bytes."""

    name: str
    content: str
    sha256: str


class SessionInfo(Struct, kw_only=True):
    """A session as the admin sees it: never the token, nor its hash."""

    instance_id: str
    uid: int
    pid: int
    scopes: list[str]
    expires_at: str
    online: bool
    bind: Literal["uid", "process"]


class ListSessionsResult(Struct, kw_only=True):
    sessions: list[SessionInfo]


# --------------------------------------------------------------------------- codecs
REQUEST_DECODER: Final = msgspec.json.Decoder(Request)
_ID_DECODER: Final = msgspec.json.Decoder(_IdOnly)
INCOMING_DECODER: Final = msgspec.json.Decoder(Incoming)
_ENCODER: Final = msgspec.json.Encoder()


def encode_frame(obj: Any) -> bytes:
    """Encode one object as an NDJSON frame (JSON + ``\\n``)."""
    return _ENCODER.encode(obj) + b"\n"


def encode_result(request_id: RequestId, result: Any) -> bytes:
    """A success response frame."""
    return _ENCODER.encode(Response(id=request_id, result=result)) + b"\n"


def encode_error(
    request_id: RequestId, code: int, message: str, data: dict[str, Any] | None = None
) -> bytes:
    """An error response frame. ``data`` should hold ``reason`` (``docs/protocol.md``)."""
    return encode_frame(
        ErrorResponse(id=request_id, error=ErrorObject(code=int(code), message=message, data=data or {}))
    )


def encode_notification(method: str, params: Any) -> bytes:
    """A server notification frame (no ``id``): ``{"jsonrpc":"2.0","method":...,"params":...}``."""
    return encode_frame(Notification(method=method, params=params))


class _OutRequest(Struct, omit_defaults=True):
    """A client request as written: ``params`` is left out when None."""

    jsonrpc: str
    id: RequestId
    method: str
    params: Any = None


def encode_request(request_id: RequestId, method: str, params: Any | None = None) -> bytes:
    """A client request frame. ``params`` is a dict or a Struct, or None to leave it out."""
    return _ENCODER.encode(_OutRequest("2.0", request_id, method, params)) + b"\n"


def encode_request_into(buf: bytearray, request_id: RequestId, method: str, params: Any | None = None) -> None:
    """Append a client request frame to ``buf`` (no intermediate bytes object)."""
    _ENCODER.encode_into(_OutRequest("2.0", request_id, method, params), buf, len(buf))
    buf += b"\n"


_RESOURCE_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def valid_resource_name(name: object) -> bool:
    """True if ``name`` is a safe resource name: it matches :data:`RESOURCE_NAME_PATTERN`
    (1-64 of ``A-Z a-z 0-9 _ . -``, first one alphanumeric) and holds no ``..``.

    Such a name is one directory entry: no ``/``, no NUL, not ``.`` or ``..``.
    """
    return (isinstance(name, str) and 1 <= len(name) <= 64 and name[0].isascii() and name[0].isalnum()
            and set(name) <= _RESOURCE_NAME_CHARS and ".." not in name)


def salvage_id(frame: bytes) -> RequestId:
    """The ``id`` of a frame that failed validation, if it has a usable one; else ``None``.

    JSON-RPC 2.0 section 5: when the id cannot be determined the response id is null.
    """
    try:
        rid = _ID_DECODER.decode(frame).id
    except (msgspec.DecodeError, RecursionError):
        return None
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        return None
    return rid


ERROR_MESSAGES: Final = {
    ErrorCode.PARSE_ERROR: "Parse error: the frame is not valid JSON.",
    ErrorCode.INVALID_REQUEST: "Invalid request: not a JSON-RPC 2.0 request object.",
}
