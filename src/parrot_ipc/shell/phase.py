"""One connection's state as one table, as h11 keeps its state machine in ``h11/_state.py``.

A connection (:class:`parrot_ipc.shell.connection.PeerLink`) is always in one :class:`Phase`;
every change is a :class:`LinkEvent` looked up in :data:`TRANSITIONS`. ``docs/architecture.md``
("One connection's state") explains each phase.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    """Where one connection is. Only :attr:`HANDSHAKE` and :attr:`IDLE` await a read."""

    HANDSHAKE = "handshake"  # reading; no complete frame yet (deadline: handshake_timeout_s after accept)
    IDLE = "idle"  # reading between chunks (deadline: idle_timeout_s, none while subscribed)
    ANSWERING = "answering"  # handling frames or a long poll; pushes go straight to the outbox
    HOLDING = "holding"  # handling frames whose responses wait for a commit; pushes are held
    DROPPED = "dropped"  # the broker closed it: no more reads, pushes are discarded


class LinkEvent(enum.Enum):
    """What moves a connection from one :class:`Phase` to another."""

    ANSWER = "answer"  # start handling frames whose responses go out as made (memory store)
    HOLD = "hold"  # start (or resume) handling frames whose responses need a commit
    RELEASE = "release"  # responses so far are queued (e.g. before a long poll): send held pushes
    READ = "read"  # the chunk is answered: read again
    DROP = "drop"  # the broker (a Drop effect) or a slow subscriber closes it


_P, _E = Phase, LinkEvent
#: The whole state machine: (phase, event) -> next phase. DROPPED absorbs every event.
TRANSITIONS: dict[tuple[Phase, LinkEvent], Phase] = {
    (_P.HANDSHAKE, _E.ANSWER): _P.ANSWERING, (_P.IDLE, _E.ANSWER): _P.ANSWERING,
    (_P.HANDSHAKE, _E.HOLD): _P.HOLDING, (_P.IDLE, _E.HOLD): _P.HOLDING, (_P.ANSWERING, _E.HOLD): _P.HOLDING,
    (_P.HOLDING, _E.RELEASE): _P.ANSWERING, (_P.ANSWERING, _E.RELEASE): _P.ANSWERING,
    (_P.ANSWERING, _E.READ): _P.IDLE, (_P.HOLDING, _E.READ): _P.IDLE,
    **{(ph, _E.DROP): _P.DROPPED for ph in Phase},
    **{(_P.DROPPED, ev): _P.DROPPED for ev in LinkEvent},
}
#: The phases in which a connection awaits a read.
READING = frozenset({Phase.HANDSHAKE, Phase.IDLE})
