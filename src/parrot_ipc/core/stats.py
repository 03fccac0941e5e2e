"""What ``admin_stats`` reports (``parrot-ipc top``): message counters, rates over a sliding
window, counts of audit events, and a bounded ring of recent ones. Metadata only.

The ring is filled from the audit path (:meth:`Stats.tee` wraps the broker's audit sink), so
it holds exactly what the audit log holds, whose fields never carry tokens, secrets or message
content (:class:`parrot_ipc.core.broker.Broker`, ``audit``). Source: ``docs/protocol.md``,
``admin_stats``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final

from .effects import AuditSink

#: How many recent audit events the ring keeps (``admin_stats`` ``max_events`` is at most this).
RING_EVENTS: Final = 100
#: Seconds over which ``messages_in_per_s`` and ``messages_out_per_s`` are averaged.
RATE_WINDOW_S: Final = 10
#: Routine events counted but not kept in the ring (one per connection or login: they would
#: push the refusals and rate limits an operator looks for out of it).
ROUTINE_EVENTS: Final = frozenset({"peer_admitted", "authenticated", "token_issued", "resource_served"})


class Stats:
    """Counters for one broker's life.

    Args:
        clock: wall clock, seconds since the Unix epoch (the broker's).
        ring_events: the ring's length (:data:`RING_EVENTS`).
        window_s: the rate window in whole seconds (:data:`RATE_WINDOW_S`).

    ``messages_in`` counts messages queued (``send``, and each recipient of a ``broadcast``);
    ``messages_out`` counts messages acked (delivered and confirmed). Never raises.
    """

    def __init__(self, clock: Callable[[], float], ring_events: int = RING_EVENTS,
                 window_s: int = RATE_WINDOW_S) -> None:
        self.clock = clock
        self.started = clock()
        self.window_s = window_s
        self.messages_in = 0
        self.messages_out = 0
        #: Audit events seen, by name (routine ones included).
        self.event_counts: Counter[str] = Counter()
        #: The last ``ring_events`` non-routine events: ``(ts_s, event, fields)``.
        self.recent: deque[tuple[float, str, dict[str, Any]]] = deque(maxlen=ring_events)
        self._seconds: deque[list[int]] = deque()  # [second, in, out], oldest first

    def tee(self, sink: AuditSink) -> AuditSink:
        """An audit sink that records each event here, then passes it on to ``sink``."""
        def audit(event: str, fields: dict[str, Any]) -> None:
            self.record(event, fields)
            sink(event, fields)
        return audit

    def record(self, event: str, fields: dict[str, Any]) -> None:
        """Count audit ``event``; keep it (a shallow copy of ``fields``) unless it is routine."""
        self.event_counts[event] += 1
        if event not in ROUTINE_EVENTS:
            self.recent.append((self.clock(), event, dict(fields)))

    def count(self, queued: int = 0, acked: int = 0) -> None:
        """Add ``queued`` messages in and ``acked`` messages out, now."""
        if not (queued or acked):
            return
        self.messages_in += queued
        self.messages_out += acked
        sec = int(self.clock())
        if self._seconds and self._seconds[-1][0] == sec:
            self._seconds[-1][1] += queued
            self._seconds[-1][2] += acked
        else:
            self._seconds.append([sec, queued, acked])
        while self._seconds and self._seconds[0][0] <= sec - self.window_s:
            self._seconds.popleft()

    def rates(self) -> tuple[float, float]:
        """Messages per second in and out, averaged over the last ``window_s`` seconds."""
        cutoff = int(self.clock()) - self.window_s
        live = [s for s in self._seconds if s[0] > cutoff]
        return (sum(s[1] for s in live) / self.window_s, sum(s[2] for s in live) / self.window_s)
