"""The bounded cache of message bodies a durable store keeps in memory (issue 14).

Bodies read from SQLite or just committed stay here until the cache's byte bound is reached;
the least recently used go first. The bound is ``store_cache_bytes`` in the config
(``docs/configuration.md``). A body costs its ``size_bytes`` plus :data:`OVERHEAD_BYTES` of
bookkeeping (the ``Message`` object, the dict entry and the id).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..core.protocol import Message

#: Bytes counted per cached body besides its ``size_bytes``: the ``Message`` object, its short
#: strings, the OrderedDict entry and allocator slack (measured: RSS with the default 8 MiB
#: cache full of 100 B bodies was about 1.45 x the bound when this was 400).
OVERHEAD_BYTES: Final = 700


class BodyCache:
    """Message bodies by id, least recently used first out, within ``max_bytes`` (bytes;
    0 keeps nothing)."""

    __slots__ = ("_items", "_used", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Message, int]] = OrderedDict()
        self._used = 0

    def put(self, mid: str, body: Message, size_bytes: int) -> None:
        """Keep ``body`` (counted as ``size_bytes`` + :data:`OVERHEAD_BYTES`), evicting the
        least recently used bodies past the bound."""
        cost = size_bytes + OVERHEAD_BYTES
        if cost > self.max_bytes:
            return
        self.pop(mid)
        self._items[mid] = (body, cost)
        self._used += cost
        while self._used > self.max_bytes:
            _, (_, c) = self._items.popitem(last=False)
            self._used -= c

    def get(self, mid: str) -> Message | None:
        """The cached body of ``mid`` (now the most recently used), or None."""
        hit = self._items.get(mid)
        if hit is None:
            return None
        self._items.move_to_end(mid)
        return hit[0]

    def pop(self, mid: str) -> None:
        """Drop the body of ``mid`` if cached."""
        hit = self._items.pop(mid, None)
        if hit is not None:
            self._used -= hit[1]

    @property
    def used_bytes(self) -> int:
        """Bytes counted for the bodies cached now."""
        return self._used

    def __len__(self) -> int:
        return len(self._items)
