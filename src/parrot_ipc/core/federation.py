"""Federation: ``name@node`` addresses, the outbox, and the relay's three methods.

Source: ``docs/federation.md`` (issue 18). A broker has a ``node`` name (``[server] node``).

- A bare name is local and never leaves the host; ``name@thisnode`` is the same local name.
- ``send`` to ``name@othernode`` needs the ``remote_send`` scope; the message is queued in the
  outbox (the mailbox :data:`OUTBOX`, a name no session can take: ``@`` is not allowed in an
  instance id), so it is committed before the response, as any send is, and counted against
  the mailbox bounds (a full outbox is -32007 ``mailbox_full``).
- The relay (admission scope ``relay``, no session) leases outbox messages with
  ``relay_take``, publishes them, and deletes them with ``relay_ack`` once the remote side
  has them; a lease that runs out puts them back (at-least-once).
- ``relay_deliver`` queues one remote message for a local name, with ``(from@node, remote id)``
  as the idempotency key, so a redelivery never reaches the mailbox twice. The recipient sees
  ``from`` as ``sender@node``, never a bare (local) name; a message claiming to come from this
  node is refused. Refusals are audited (``remote_refused``) and bounced to the sender.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ..errors import ErrorCode, RpcError
from . import protocol as p
from .connection import Connection
from .delivery import OUTBOX
from .policy import SCOPE_RELAY, SCOPE_REMOTE_SEND, remote_rules_of
from .timefmt import rfc3339

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["OUTBOX", "POSTMASTER", "list_nodes", "relay_ack", "relay_deliver", "relay_take", "remote_node",
           "send_remote", "split_address"]
#: The sender name of a bounce (``postmaster@node``), as mail systems do (RFC 5321, 4.5.1).
POSTMASTER: Final = "postmaster"


def _seen(b: Broker, node: str, now: float, delivered: bool) -> None:
    row = b.remote_nodes.setdefault(node, [now, 0, 0])
    row[0] = now
    row[1 if delivered else 2] += 1


def list_nodes(b: Broker, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.ListNodesResult:
    """``list_nodes`` (scope ``list``): the remote nodes this broker had mail from since it
    started (what the relay delivered or had refused), most recent first."""
    rows = sorted(b.remote_nodes.items(), key=lambda kv: -kv[1][0])
    return p.ListNodesResult(nodes=[p.NodeInfo(node=n, last_seen=rfc3339(r[0]), delivered=int(r[1]),
                                               refused=int(r[2])) for n, r in rows])


def split_address(address: str) -> tuple[str, str | None]:
    """``"bob@h2"`` -> ``("bob", "h2")``; a bare ``"bob"`` -> ``("bob", None)``."""
    name, at, node = address.partition("@")
    return name, (node if at else None)


def remote_node(b: Broker, address: str) -> str | None:
    """The node ``address`` goes to if it leaves this host, else None (bare, or this node).

    Raises:
        RpcError: -32602 ``federation_off`` for ``name@node`` when this broker has no ``node``.
    """
    _, node = split_address(address)
    if node is None:
        return None
    here = b.config.node
    if here is None:
        raise RpcError(ErrorCode.INVALID_PARAMS, "federation_off",
                       "This broker has no [server] node name, so it cannot send to name@host.")
    return None if node == here else node


def send_remote(b: Broker, conn: Connection, sender: str, prm: p.SendParams, now: float) -> p.SendResult:
    """Queue ``prm`` (to ``name@othernode``) in the outbox; needs ``remote_send``.

    Raises:
        RpcError: -32002 ``scope_missing`` (audited ``scope_denied``) without ``remote_send``;
            -32002 ``recipient_not_allowed`` when ``may_send_to`` refuses the address; the
            outbox's mailbox bounds (-32007).
    """
    adm, s = conn.admission, conn.session
    if s is None or SCOPE_REMOTE_SEND not in adm.scopes or SCOPE_REMOTE_SEND not in s.scopes:
        b.audit("scope_denied", {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": sender,
                                 "scope": SCOPE_REMOTE_SEND})
        raise RpcError(ErrorCode.FORBIDDEN, "scope_missing",
                       f"This session lacks the scope {SCOPE_REMOTE_SEND!r} (send off-host).",
                       scope=SCOPE_REMOTE_SEND)
    if not adm.may_send(prm.to):
        b.audit("send_denied", {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": sender,
                                "to": prm.to, "rule": adm.rule})
        raise RpcError(ErrorCode.FORBIDDEN, "recipient_not_allowed",
                       f"This peer may not send to {prm.to!r}.", to=prm.to)
    msg = b.delivery.enqueue(sender, OUTBOX, prm.content, prm.data, now, to=prm.to)
    return p.SendResult(id=msg.id, to=prm.to, status="queued")


def _require_relay(b: Broker, conn: Connection, method: str) -> None:
    """Raises -32002 ``scope_missing`` (audited ``scope_denied``) unless the connection's
    admission grants the ``relay`` scope."""
    if SCOPE_RELAY not in conn.admission.scopes:
        b.audit("scope_denied", {"conn": conn.conn_id, "uid": conn.peer.uid, "method": method,
                                 "scope": SCOPE_RELAY})
        raise RpcError(ErrorCode.FORBIDDEN, "scope_missing", f"{method} needs the scope 'relay'.",
                       scope=SCOPE_RELAY)


def relay_take(b: Broker, conn: Connection, prm: p.RelayTakeParams, rid: p.RequestId) -> p.ReceiveResult:
    """``relay_take`` (relay): lease up to ``max`` outbox messages for ``lease_s`` seconds.
    Each has ``from`` = the bare local sender and ``to`` = ``name@node``."""
    _require_relay(b, conn, "relay_take")
    return p.ReceiveResult(messages=b.delivery.lease(OUTBOX, prm.max))


def relay_ack(b: Broker, conn: Connection, prm: p.RelayAckParams, rid: p.RequestId) -> p.AckResult:
    """``relay_ack`` (relay): delete outbox messages the remote side has (after its ack)."""
    _require_relay(b, conn, "relay_ack")
    return p.AckResult(acked=len(b.store.ack(OUTBOX, prm.ids)))


def _refusal(b: Broker, prm: p.RelayDeliverParams) -> str | None:
    """Why ``prm`` may not be delivered here, or None."""
    if b.config.node is None:
        return "federation_off"
    if prm.node == b.config.node:
        return "remote_claims_local_node"
    if remote_rules_of(b.policy).allowing(prm.node, prm.to) is None:
        return "remote_not_allowed"
    return None


def relay_deliver(b: Broker, conn: Connection, prm: p.RelayDeliverParams,
                  rid: p.RequestId) -> p.RelayDeliverResult:
    """``relay_deliver`` (relay): queue one remote message for a local name, once.

    The sender is always ``from@node`` (a remote message never carries a local identity).
    A refusal (no ``[[remote]]`` rule, this node's own name, a full mailbox) is audited as
    ``remote_refused`` and a bounce with the reason goes back to the sender through the
    outbox (a refused bounce is not bounced again). Errors: -32002 without ``relay``.
    """
    _require_relay(b, conn, "relay_deliver")
    now, sender = b.clock(), f"{prm.from_}@{prm.node}"
    hit = b.store.get_idempotent(sender, prm.id, now)
    if hit is not None:
        return p.RelayDeliverResult(status="duplicate", id=hit.id)
    reason = _refusal(b, prm)
    if reason is None:
        target, _ = b.delivery.resolve(prm.to, now)
        try:
            msg = b.delivery.enqueue(sender, target, prm.content, prm.data, now)
        except RpcError as exc:
            reason = exc.reason
        else:
            b.store.put_idempotent(sender, prm.id, p.SendResult(id=msg.id, to=target, status="queued"),
                                   now + b.config.idempotency_ttl_s)
            b.delivery.deliver(target)
            _seen(b, prm.node, now, True)
            return p.RelayDeliverResult(status="delivered", id=msg.id)
    return _refuse(b, prm, sender, reason, now)


def _refuse(b: Broker, prm: p.RelayDeliverParams, sender: str, reason: str, now: float) -> p.RelayDeliverResult:
    """Audit a refused remote message and, unless it is a bounce, queue a bounce to its sender."""
    _seen(b, prm.node, now, False)
    b.audit("remote_refused", {"node": prm.node, "from": sender, "to": prm.to, "id": prm.id,
                               "reason": reason, "bounce": prm.bounce})
    # Remember the refusal under the same key, so a redelivery is neither bounced twice.
    b.store.put_idempotent(sender, prm.id, p.SendResult(id="", to=prm.to, status="queued"),
                           now + b.config.idempotency_ttl_s)
    if prm.bounce or reason == "remote_claims_local_node" or b.config.node is None:
        return p.RelayDeliverResult(status="refused", reason=reason)
    data = {"bounce": {"id": prm.id, "to": f"{prm.to}@{b.config.node}", "reason": reason}}
    text = f"Undeliverable: {prm.to}@{b.config.node} refused the message {prm.id} ({reason})."
    try:
        b.delivery.enqueue(POSTMASTER, OUTBOX, text, data, now, to=sender)
    except RpcError:
        return p.RelayDeliverResult(status="refused", reason=reason)
    return p.RelayDeliverResult(status="bounced", reason=reason)
