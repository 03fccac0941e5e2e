"""NDJSON framing: split a byte stream into frames of one JSON object each.

The framing is the MCP stdio transport's (MCP specification, "Transports", stdio: messages are
delimited by newlines and must not contain embedded newlines) and the same on the broker's Unix
socket (``docs/protocol.md``, Framing): one UTF-8 JSON object per line, ended by a single
``\\n``. Blank lines (only whitespace) are skipped, and a frame longer than ``max_frame_bytes``
is refused with :class:`~parrot_ipc.errors.FrameTooLarge` (the broker answers -32004 and
closes).

Pure: bytes in, frames out. No I/O.
"""

from __future__ import annotations

from typing import Final

from ..errors import FrameTooLarge

#: The default longest frame, in bytes, not counting its ``\n`` (``docs/protocol.md``).
DEFAULT_MAX_FRAME_BYTES: Final = 65536


class FrameBuffer:
    """Splits a byte stream into NDJSON frames, holding at most ``max_frame_bytes`` of a partial one.

    Args:
        max_frame_bytes: the longest frame allowed, in bytes, not counting its ``\\n``.

    ``feed(data)`` returns the complete frames (``\\n`` stripped, empty lines dropped) and keeps
    the tail. It raises :class:`~parrot_ipc.errors.FrameTooLarge` as soon as a complete frame
    or the unterminated tail exceeds the limit, so the caller never buffers more than
    ``max_frame_bytes`` plus one read.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()  # the unterminated tail; grows in place (no copy per read)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for a frame whose ``\\n`` has not arrived yet."""
        return len(self._buf)

    def take_tail(self) -> bytes | None:
        """At EOF: the unterminated last frame held (now cleared), or None if it is empty or
        only whitespace. EOF ends a last frame as ``\n`` would (``docs/protocol.md``)."""
        tail = bytes(self._buf)
        self._buf.clear()
        return tail if tail and not tail.isspace() else None

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the frames it completes, each without its ``\\n``.

        Raises :class:`~parrot_ipc.errors.FrameTooLarge` (its ``size`` in bytes) for a frame,
        or an unterminated tail, over ``max_frame_bytes``; the partial frame held is dropped.

        Linear in the bytes fed: a partial frame is appended to a bytearray in place, and each
        byte is copied a bounded number of times however many reads a frame takes.
        """
        out: list[bytes] = []
        if self._buf:
            data = self._finish_partial(data, out)
        if data:
            self._split(data, out)
        return out

    def _finish_partial(self, data: bytes, out: list[bytes]) -> bytes:
        """Extend the held partial frame with ``data``; return what follows its ``\\n``."""
        buf, limit = self._buf, self.max_frame_bytes
        nl = data.find(b"\n")
        size = len(buf) + (len(data) if nl < 0 else nl)
        if size > limit:
            buf.clear()
            raise FrameTooLarge(size)
        if nl < 0:
            buf += data
            return b""
        buf += data[:nl]
        first = bytes(buf)
        buf.clear()
        if first and not first.isspace():
            out.append(first)
        return data[nl + 1:]

    def _split(self, data: bytes, out: list[bytes]) -> None:
        """Append the complete frames in ``data`` to ``out``; hold its unterminated tail."""
        limit = self.max_frame_bytes
        if b"\n" not in data:
            if len(data) > limit:
                raise FrameTooLarge(len(data))
            self._buf += data
            return
        *frames, tail = data.split(b"\n")
        if len(tail) > limit:
            raise FrameTooLarge(len(tail))
        for frame in frames:
            if len(frame) > limit:
                raise FrameTooLarge(len(frame))
            if frame and not frame.isspace():
                out.append(frame)
        if tail:
            self._buf += tail
