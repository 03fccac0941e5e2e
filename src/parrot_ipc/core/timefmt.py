"""RFC 3339 timestamps (RFC 3339 section 5.6) and arrival-sortable message ids."""

from __future__ import annotations

import math
from datetime import UTC, datetime

_last_second: tuple[int, str] = (-1 << 62, "")


def rfc3339(epoch_s: float) -> str:
    """``epoch_s`` (seconds since the Unix epoch) as RFC 3339 UTC with milliseconds and ``Z``.

    Rounded to the microsecond, then truncated to the millisecond (as
    ``datetime.isoformat(timespec="milliseconds")`` does). The date and time of day of the
    last second are cached: a burst of sends formats them once.
    """
    global _last_second
    frac, whole = math.modf(epoch_s)  # datetime.fromtimestamp's own rounding
    us = round(frac * 1e6)
    sec = int(whole)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    elif us < 0:
        sec, us = sec - 1, us + 1_000_000
    ms = us // 1000
    if _last_second[0] != sec:
        _last_second = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_last_second[1]}.{ms:03d}Z"


def parse_rfc3339(text: str) -> float:
    """Inverse of :func:`rfc3339`: seconds since the epoch. Raises ValueError on a bad string."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class IdGenerator:
    """Message ids that sort by arrival: 12 hex digits of milliseconds, then 6 of a sequence.

    Monotonic even if the wall clock steps back: the millisecond part never decreases.
    ``floor_id`` (an id this class made: 18 hex digits) seeds the generator past ids already
    issued (for example, the highest one read from a durable store); a malformed one raises
    ``ValueError``. Ids are compared as strings, so their fixed width keeps the order.
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
