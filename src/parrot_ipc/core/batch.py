"""JSON-RPC 2.0 batches: one frame holding an array of requests (JSON-RPC 2.0 section 6).

Rules (``docs/protocol.md``, "Batches"):

- The response is one frame: an array holding one response per member that has an id, in
  member order (the spec allows any order). Notifications get nothing; a batch of only
  notifications gets no frame at all.
- ``[]`` gets one -32600 ``invalid_request`` object (id null), not an array; so does a batch of
  more than ``max_batch_length`` members (``batch_too_long``). A frame that is not valid JSON
  gets one -32700 object, as for a single request.
- Each member is handled as a request of its own (:meth:`Broker.handle_frame`): it takes a
  token of the UID's rate limit, and a member that is not a request object (``1``, ``[]``) gets
  its own -32600. A ``receive`` with ``wait_s`` inside a batch does not wait: it is answered at
  once, as if ``wait_s`` were 0, so one long poll never holds up the other members.
- The reply is a :class:`BatchReply`, so the shell counts it as that many responses against
  ``max_pending_responses``.

Pure: bytes in, bytes out. The shell never sees a batch as anything but one frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec import UNSET, Raw

from ..errors import ErrorCode
from . import protocol as p
from .effects import WaitForMail

if TYPE_CHECKING:
    from .broker import Broker
    from .connection import Connection

_BATCH_DECODER: Final = msgspec.json.Decoder(list[Raw])
_WHITESPACE: Final = b" \t\r\n"  # RFC 8259 section 2: insignificant whitespace


class BatchReply(bytes):
    """A batch's response frame (a JSON array and its ``\\n``); ``responses`` is how many
    response objects it holds (>= 1)."""

    responses: int = 1


def is_batch(frame: bytes) -> bool:
    """True if ``frame`` is a JSON array: its first byte that is not whitespace is ``[``."""
    return frame.lstrip(_WHITESPACE)[:1] == b"["


def is_json(frame: bytes) -> bool:
    """True if ``frame`` is well-formed JSON (RFC 8259), whatever its shape. No object is built."""
    try:
        p.JSON_CHECK.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


def handle_batch(broker: Broker, conn: Connection, frame: bytes) -> bytes | None:
    """Answer the batch ``frame`` from ``conn`` (JSON-RPC 2.0 section 6).

    Returns a :class:`BatchReply` (an array of responses), one error frame for a batch that is
    not valid JSON (-32700), empty or too long (-32600), or None if every member is a
    notification.
    """
    try:
        if not frame.isascii():  # msgspec checks UTF-8 only inside the strings it decodes
            frame.decode()
        members = _BATCH_DECODER.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _whole(broker, conn, ErrorCode.PARSE_ERROR, "parse_error",
                      "Parse error: the frame is not valid UTF-8 JSON.", {})
    if not members:
        return _whole(broker, conn, ErrorCode.INVALID_REQUEST, "invalid_request",
                      "Invalid request: an empty batch (JSON-RPC 2.0 section 6).", {})
    limit = broker.config.max_batch_length
    if len(members) > limit:
        return _whole(broker, conn, ErrorCode.INVALID_REQUEST, "batch_too_long",
                      f"Invalid request: a batch of {len(members)} requests; at most {limit} "
                      f"(max_batch_length).", {"max_batch_length": limit})
    outs: list[bytes] = []
    for member in members:
        data = bytes(member)
        out: bytes | WaitForMail | None
        if data[:1] == b"[":  # a batch inside a batch is not a request object
            out = _whole(broker, conn, ErrorCode.INVALID_REQUEST, "invalid_request",
                         "Invalid request: a batch member must be a request object, not an array.", {})
        else:
            out = broker.handle_frame(conn, data)
        if isinstance(out, WaitForMail):  # a long poll inside a batch does not wait
            out = broker.poll_receive(conn, out, final=True)
        if out is not None:
            outs.append(out[:-1])  # without its "\n"
    return join_replies(outs)


def join_replies(outs: list[bytes]) -> BatchReply | None:
    """One array frame of the response objects ``outs`` (each without its ``\\n``), or None."""
    if not outs:
        return None
    reply = BatchReply(b"[" + b",".join(outs) + b"]\n")
    reply.responses = len(outs)
    return reply


def _whole(broker: Broker, conn: Connection, code: ErrorCode, reason: str, message: str,
           data: dict[str, Any]) -> bytes | None:
    """One error object for the whole batch; it takes one token of the rate limit (-32003 if
    there is none), and is audited as ``bad_request``."""
    bucket = conn.bucket
    if bucket is not None:
        wait = bucket.take(broker.clock())
        if wait:
            # b"": no id and not a batch, so the -32003 has id null and recurses no further.
            return broker._rate_limited(conn, bucket, b"", wait)
        bucket.limited = False
    broker._audit_bad(conn, code, reason, None)
    return p.encode_error(None, code, message, {"reason": reason, **data})


def each_failed(frame: bytes, code: ErrorCode, message: str, data: dict[str, Any]) -> bytes:
    """The error ``code`` for every member of the batch ``frame`` that is owed a response (all
    but notifications), as one array frame; an empty bytes if none is owed.

    The shell answers a batch this way when the commit of its state failed (-32603
    ``store_write_failed``), as it answers a single request.
    """
    try:
        members = _BATCH_DECODER.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return p.encode_error(None, code, message, data)
    outs = []
    for member in members:
        try:
            if p.REQUEST_DECODER.decode(member).id is UNSET:
                continue  # a notification is owed nothing
        except (msgspec.DecodeError, RecursionError):
            pass
        outs.append(p.encode_error(p.salvage_id(bytes(member)), code, message, data)[:-1])
    return join_replies(outs) or b""
