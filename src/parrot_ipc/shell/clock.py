"""The core's wall clock, derived from trio's clock, so ``trio.testing.MockClock`` drives it.

The core (:class:`parrot_ipc.core.Broker`) takes ``clock() -> float`` in seconds since the Unix
epoch: lease expiry, timeouts, rate limits and the shell's ticker all read it. Deriving it
from ``trio.current_time()`` keeps one time line: under a ``MockClock`` (autojump) a test that
waits out a lease or an idle timeout takes no real time.
"""

from __future__ import annotations

import time

import trio


class TrioWallClock:
    """Epoch seconds that advance with ``trio.current_time()``.

    The offset ``time.time() - trio.current_time()`` is captured by the first call made inside
    ``trio.run`` (or by :meth:`start`); then a call returns ``offset + trio.current_time()``.
    Outside ``trio.run`` (before it starts, e.g. while the broker is constructed, or after it
    ends) a call returns ``time.time()``.
    """

    __slots__ = ("_offset",)

    def __init__(self) -> None:
        self._offset: float | None = None

    def start(self) -> None:
        """Capture the offset now (inside ``trio.run``); later calls follow trio's clock.

        Raises:
            RuntimeError: called outside ``trio.run``.
        """
        self._offset = time.time() - trio.current_time()

    def __call__(self) -> float:
        """Now, in seconds since the Unix epoch (a float)."""
        try:
            now = trio.current_time()
        except RuntimeError:  # not inside trio.run
            return time.time()
        if self._offset is None:
            self._offset = time.time() - now
        return self._offset + now


def trio_wall_clock() -> TrioWallClock:
    """A new :class:`TrioWallClock`: pass the same one to ``Broker(clock=)`` and
    ``BrokerServer(clock=)``."""
    return TrioWallClock()
