"""What the core hands back to the shell besides response frames: effects, long-poll waits,
and audit events.

The core never writes to a socket or sleeps. After each call the shell takes the effects
(:meth:`parrot_ipc.core.broker.Broker.take_effects`) and carries them out: write a
:class:`Push`, wake long-polls on a :class:`Wake`, close on a :class:`Drop`. A ``receive``
that must wait returns a :class:`WaitForMail` instead of a frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .connection import Connection
from .protocol import RequestId

#: Receives security events ``(event, fields)``. Fields never hold tokens, secrets or message
#: content. The daemon's sink writes JSON lines to the ``parrot_ipc.audit`` logger.
AuditSink = Callable[[str, dict[str, Any]], None]


def discard_audit(event: str, fields: dict[str, Any]) -> None:
    """An :data:`AuditSink` that drops every event: the broker's default when none is given."""


@dataclass(slots=True)
class Push:
    """Effect: write ``frame`` (a notification, NDJSON with its ``\\n``) to ``conn``, after
    the current response."""

    conn: Connection
    frame: bytes


@dataclass(slots=True)
class Wake:
    """Effect: mail may be ready for ``instance_id``; wake any long-poll ``receive`` on it."""

    instance_id: str


@dataclass(slots=True)
class Drop:
    """Effect: close ``conn`` (its peer is no longer admitted after a policy reload)."""

    conn: Connection


Effect = Push | Wake | Drop


@dataclass(slots=True)
class WaitForMail:
    """Returned for a ``receive`` with ``wait_s`` > 0 that found nothing.

    The shell waits up to ``wait_s`` seconds (or until a :class:`Wake` for the connection's
    instance), then calls :meth:`parrot_ipc.core.broker.Broker.poll_receive`. ``request_id``
    is the request's JSON-RPC id; ``max_count`` its ``max`` (1-1000).
    """

    request_id: RequestId
    max_count: int
    wait_s: float
