"""Per-row integrity of stored messages (issue 14): THE checksum of a ``messages`` row. It is
written with the row (:class:`parrot_ipc.store.ops.PutMessage`) and checked by THE function the
read path calls, :func:`parrot_ipc.store.schema.message_from_row`.

The checksum is CRC-32 (``zlib.crc32``, the ISO-HDLC polynomial of RFC 1952 section 8; the
standard library has neither CRC-32C nor xxHash) over a canonical encoding of the row's
``id``, ``sender``, ``recipient``, ``content``, ``sent_at`` and ``data`` columns: the JSON array
of the five strings (``recipient`` may be ``null``: rows of schema version 1), then, when
``data`` is not NULL, a newline and the ``data`` bytes. JSON strings are length-delimited by
their quotes and escapes, so two different rows never share an encoding. It is an unsigned
32-bit integer, stored in ``messages.checksum`` (schema version 5). It detects accidental
change (a flipped byte, a torn page), not tampering: whoever can write the database file can
recompute it. The mailbox and lease are not covered: a rename moves a message, a receive
leases it, and neither changes what a client reads.
"""

from __future__ import annotations

import zlib
from typing import Final

import msgspec

_encode: Final = msgspec.json.encode


def row_checksum(mid: str, sender: str, recipient: str | None, content: str, data: bytes | None,
                 sent_at: str) -> int:
    """The checksum of one ``messages`` row: an unsigned 32-bit CRC-32 (see the module doc).

    Raises:
        TypeError: a value of the wrong type (a damaged row), from the JSON encoder.
    """
    head = _encode((mid, sender, recipient, content, sent_at))
    return zlib.crc32(head if data is None else head + b"\n" + bytes(data))
