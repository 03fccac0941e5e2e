"""The results of the admin methods (``list_sessions``, ``admin_stats``): what an operator sees.

Metadata only: never a token, its hash, a secret or message content (``docs/protocol.md``,
Methods, and ``docs/security.md``). Re-exported by :mod:`parrot_ipc.core.protocol`.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct

from .schema import InstanceInfo

__all__ = ["AdminStatsResult", "AuditEvent", "ListSessionsResult", "SessionInfo", "UidConnections"]


class SessionInfo(Struct, kw_only=True):
    """A session as the admin sees it: never the token, nor its hash."""

    instance_id: str
    uid: int
    pid: int
    scopes: list[str]
    expires_at: str
    online: bool
    bind: Literal["uid", "process"]


class ListSessionsResult(Struct, kw_only=True):
    """``list_sessions`` (admin): every live session, sorted by instance id."""

    sessions: list[SessionInfo]


class AuditEvent(Struct, kw_only=True):
    """One recent audit event as ``admin_stats`` returns it: ``ts`` (RFC 3339 UTC), the event
    name, and its fields (metadata: uids, pids, instance names, reasons; never a token, secret
    or message content)."""

    ts: str
    event: str
    fields: dict[str, Any]


class UidConnections(Struct, kw_only=True):
    """Open connections of one peer UID."""

    uid: int
    connections: int


class AdminStatsResult(Struct, kw_only=True):
    """``admin_stats`` (admin): a snapshot for ``parrot-ipc top``. Metadata only.

    ``messages_in_total`` counts messages queued (``send``, each ``broadcast`` recipient) and
    ``messages_out_total`` messages acked, since ``started_at``; the ``*_per_s`` rates average
    them over the last ``rate_window_s`` seconds. ``audit_counts`` counts every audit event by
    name; ``recent_events`` are the newest non-routine ones (refusals, rate limits, ...), newest
    last.
    """

    now: str
    started_at: str
    uptime_s: float
    connections: int
    connections_by_uid: list[UidConnections]
    live_sessions: int
    instances: list[InstanceInfo]
    messages_in_total: int
    messages_out_total: int
    messages_in_per_s: float
    messages_out_per_s: float
    rate_window_s: float
    audit_counts: dict[str, int]
    recent_events: list[AuditEvent]
