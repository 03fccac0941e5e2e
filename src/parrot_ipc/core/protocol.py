"""Wire protocol v1: the JSON-RPC 2.0 envelope and the codecs for frames.

Source: ``docs/protocol.md`` ("Envelope") and the JSON-RPC 2.0 specification (section 4
request and notification, section 5 response, section 5.1 error object).

This module is the protocol's one import point. Besides the envelope and codecs defined here
it re-exports the params and results of every method (:mod:`parrot_ipc.core.schema`) and the
NDJSON framing (:class:`FrameBuffer`, :data:`DEFAULT_MAX_FRAME_BYTES` from
:mod:`parrot_ipc.core.framing`), so ``from parrot_ipc.core import protocol as p`` then
``p.SendResult`` or ``p.FrameBuffer`` works.

Everything here is pure: bytes in, Structs out, and back. Decoders and encoders are built once
at import and reused.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType, field

from .admin_schema import *  # noqa: F403  (list_sessions, admin_stats)
from .federation_schema import *  # noqa: F403  (issue 18: list_nodes and the relay's methods)

# Re-exported: the framing moved to .framing; ``p.FrameBuffer`` and this import path stay.
from .framing import DEFAULT_MAX_FRAME_BYTES as DEFAULT_MAX_FRAME_BYTES
from .framing import FrameBuffer as FrameBuffer

# Re-exported: the params and results of each method live in .schema (``p.SendResult`` etc.).
from .schema import *  # noqa: F403

PROTOCOL_VERSION: Final = 1

#: An id as a request may carry it (JSON-RPC 2.0 section 4: a string, a number or null).
WireId = int | str | float | None
#: An id as the broker echoes it: a :data:`WireId`, or the id's exact text (:class:`msgspec.Raw`)
#: for a fractional number, so ``1.50`` comes back as ``1.50`` (``docs/protocol.md``, "Ids").
RequestId = int | str | float | Raw | None
_EMPTY_OBJECT: Final = Raw(b"{}")
_ABSENT: Final = Raw(b"")
_NULL: Final = Raw(b"null")


# --------------------------------------------------------------------------- envelope
class Request(Struct, kw_only=True):
    """A JSON-RPC 2.0 request or notification, with ``params`` left undecoded.

    ``id`` is ``UNSET`` for a notification (no ``id`` member), which gets no response.
    ``params`` stays a :class:`msgspec.Raw` until the method is known, so an unknown method
    (-32601) is told apart from bad params (-32602).
    """

    jsonrpc: Literal["2.0"]
    method: str
    id: WireId | UnsetType = UNSET
    params: Raw = field(default_factory=lambda: _EMPTY_OBJECT)


class _IdOnly(Struct):
    id: Any = None


class _RawIdOnly(Struct):
    id: Raw = field(default_factory=lambda: _NULL)


class ErrorObject(Struct, omit_defaults=True):
    """JSON-RPC error object. ``data.reason`` is always present on broker errors."""

    code: int
    message: str
    data: dict[str, Any] = {}


class _JsonRpc(Struct, kw_only=True):
    """The member every JSON-RPC 2.0 object starts with (spec sections 4 and 5): ``"jsonrpc": "2.0"``.
    Subclasses add their members after it, in the order they are encoded."""

    jsonrpc: str = "2.0"


class Response(_JsonRpc, kw_only=True):
    """A JSON-RPC 2.0 success response (spec section 5): ``{"jsonrpc":"2.0","id":...,"result":...}``."""

    id: RequestId
    result: Any


class ErrorResponse(_JsonRpc, kw_only=True):
    """A JSON-RPC 2.0 error response (spec section 5): ``id`` is null when it could not be read."""

    id: RequestId
    error: ErrorObject


class Notification(_JsonRpc, kw_only=True):
    """A server-to-client notification (spec section 4.1, no ``id``): ``message`` pushes one :class:`Message`."""

    method: str
    params: Any


class Incoming(_JsonRpc, kw_only=True):
    """What a *client* reads: a response (``id`` + ``result`` or ``error``) or a notification."""

    id: WireId = None
    result: Raw = field(default_factory=lambda: _ABSENT)
    error: ErrorObject | None = None
    method: str | None = None
    params: Raw = field(default_factory=lambda: _ABSENT)

    @property
    def is_notification(self) -> bool:
        """True for a server notification (a ``method``, and neither ``result`` nor ``error``)."""
        return self.method is not None and self.error is None and len(self.result) == 0


# --------------------------------------------------------------------------- codecs
REQUEST_DECODER: Final = msgspec.json.Decoder(Request)
_ID_DECODER: Final = msgspec.json.Decoder(_IdOnly)
_RAW_ID_DECODER: Final = msgspec.json.Decoder(_RawIdOnly)
#: Checks that a frame is well-formed JSON (RFC 8259) without building any object.
JSON_CHECK: Final = msgspec.json.Decoder(Raw)
INCOMING_DECODER: Final = msgspec.json.Decoder(Incoming)
_ENCODER: Final = msgspec.json.Encoder()


def encode_frame(obj: Any) -> bytes:
    """Encode one msgspec-encodable object as an NDJSON frame (compact JSON + ``\\n``).

    Raises ``TypeError`` for an object msgspec cannot encode.
    """
    return _ENCODER.encode(obj) + b"\n"


def encode_result(request_id: RequestId, result: Any) -> bytes:
    """A JSON-RPC 2.0 success response frame (spec section 5), NDJSON with its ``\\n``.

    ``result`` is any msgspec-encodable value (a result Struct, ``"pong"``). Raises
    ``TypeError`` for a value msgspec cannot encode (a bug, never the peer's input).
    """
    return _ENCODER.encode(Response(id=request_id, result=result)) + b"\n"


def encode_error(
    request_id: RequestId, code: int, message: str, data: dict[str, Any] | None = None
) -> bytes:
    """A JSON-RPC 2.0 error response frame (spec sections 5 and 5.1), NDJSON with its ``\\n``.

    ``request_id`` is None when the request's id could not be read. ``code`` is an
    :class:`~parrot_ipc.errors.ErrorCode`; ``data`` should hold ``reason`` (``docs/protocol.md``,
    "Error codes") and never a token, a secret or message content.
    """
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


def salvage_id(frame: bytes) -> RequestId:
    """The ``id`` of a frame that failed validation, if it has a usable one; else ``None``.

    JSON-RPC 2.0 section 5: when the id cannot be determined the response id is null.
    """
    try:
        rid = _ID_DECODER.decode(frame).id
    except (msgspec.DecodeError, RecursionError):
        return None
    if isinstance(rid, bool) or not isinstance(rid, (int, str, float)):
        return None
    return exact_id(frame) if isinstance(rid, float) else rid


def exact_id(frame: bytes) -> RequestId:
    """The ``id`` of ``frame`` (a request whose id decoded as a fractional number) as its exact
    JSON text, a :class:`msgspec.Raw` that encodes back byte for byte (``1.50`` stays ``1.50``).

    JSON-RPC 2.0 section 5: the response id MUST be the same as the request's. None if the
    frame has no usable id.
    """
    try:
        return _RAW_ID_DECODER.decode(frame).id
    except (msgspec.DecodeError, RecursionError):
        return None
