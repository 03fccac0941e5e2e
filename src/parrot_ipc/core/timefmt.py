"""RFC 3339 timestamps (RFC 3339 section 5.6) and arrival-sortable message ids."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(epoch_s: float) -> str:
    """``epoch_s`` (seconds since the Unix epoch) as RFC 3339 UTC with milliseconds and ``Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> float:
    """Inverse of :func:`rfc3339`: seconds since the epoch. Raises ValueError on a bad string."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class IdGenerator:
    """Message ids that sort by arrival: 12 hex digits of milliseconds, then 6 of a sequence.

    Monotonic even if the wall clock steps back: the millisecond part never decreases.
    ``floor_id`` seeds the generator past ids already issued (for example, ones read from a
    durable store).
    """

    __slots__ = ("_last_ms", "_seq")

    def __init__(self, floor_id: str | None = None) -> None:
        self._last_ms = 0
        self._seq = 0
        if floor_id:
            self._last_ms = int(floor_id[:12], 16)
            self._seq = int(floor_id[12:18], 16)

    def next(self, now_s: float) -> str:
        """A new id for an arrival at ``now_s`` (seconds since the epoch)."""
        ms = int(now_s * 1000)
        if ms > self._last_ms:
            self._last_ms, self._seq = ms, 0
        else:
            self._seq += 1
            if self._seq > 0xFFFFFF:
                self._last_ms, self._seq = self._last_ms + 1, 0
        return f"{self._last_ms:012x}{self._seq:06x}"
