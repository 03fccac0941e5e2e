"""The params and results of the federation methods (issue 18, docs/federation.md):
``list_nodes`` and the relay's ``relay_take``, ``relay_ack`` and ``relay_deliver``.

Kept apart from :mod:`.schema` (which holds the other methods') so neither grows past the
module size rule; :mod:`parrot_ipc.core.protocol` re-exports both, so ``p.RelayTakeParams``
works like ``p.SendParams``. Unknown params fields are -32602, as everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

from .schema import InstanceId, Node, _Params

__all__ = ["ListNodesResult", "NodeInfo", "RelayAckParams", "RelayDeliverParams", "RelayDeliverResult",
           "RelayTakeParams"]


class RelayTakeParams(_Params):
    """``relay_take`` (relay): lease up to ``max`` (1-1000, default 100) outbox messages."""

    max: Annotated[int, Meta(ge=1, le=1000)] = 100


class RelayAckParams(_Params):
    """``relay_ack`` (relay): up to 1000 outbox message ids that the remote side has taken."""

    ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=1000)]


class RelayDeliverParams(_Params):
    """``relay_deliver`` (relay): one message from node ``node``: its id there (the
    idempotency key here), the bare sender ``from`` and local recipient ``to``, ``content``,
    optional ``data``, ``sent_at`` (RFC 3339) and ``bounce`` (a refusal coming back)."""

    id: Annotated[str, Meta(min_length=1, max_length=64)]
    node: Node
    from_: InstanceId = field(name="from")
    to: InstanceId
    content: str
    data: dict[str, Any] | None = None
    sent_at: Annotated[str, Meta(max_length=64)] = ""
    bounce: bool = False


class RelayDeliverResult(Struct, kw_only=True):
    """``relay_deliver``: ``"delivered"`` (queued here under ``id``), ``"duplicate"`` (this
    remote id was delivered before), ``"bounced"`` (refused; a bounce is in the outbox) or
    ``"refused"`` (refused, no bounce: it was a bounce itself); ``reason`` says why."""

    status: Literal["delivered", "duplicate", "bounced", "refused"]
    id: str = ""
    reason: str = ""


class NodeInfo(Struct, kw_only=True):
    """One row of ``list_nodes``: a remote node this broker had mail from since it started,
    when (RFC 3339 UTC), and how many of its messages were delivered and refused."""

    node: str
    last_seen: str
    delivered: int
    refused: int


class ListNodesResult(Struct, kw_only=True):
    """``list_nodes``: the remote nodes seen since the broker started, most recent first."""

    nodes: list[NodeInfo]
