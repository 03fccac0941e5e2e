"""The one method table of protocol v1: JSON-RPC method name -> params type, result type,
what the caller needs, and the handler.

Source: ``docs/protocol.md`` ("Methods": the table of methods, their needs, params and
results; "Semantics"). Each handler runs after the broker has checked what the method needs
and decoded its params; it returns a result Struct (or a :class:`WaitForMail`) or raises
:class:`~parrot_ipc.errors.RpcError`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ..errors import ErrorCode, ResourceRefused, RpcError
from ..store import Session
from . import federation
from . import protocol as p
from .connection import Connection
from .effects import WaitForMail, Wake
from .policy import SCOPE_RESOURCES
from .schema import METHOD_NEEDS, PUBLIC, SESSION
from .timefmt import rfc3339

if TYPE_CHECKING:
    from .broker import Broker

log = logging.getLogger("parrot_ipc.broker")


Handler = Callable[["Broker", Connection, Any, p.RequestId], Any]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One method of protocol v1.

    Attributes:
        name: the JSON-RPC ``method`` string.
        params: the msgspec Struct its ``params`` decode to (unknown fields are -32602).
        result: the type of its ``result`` (a Struct, or ``str`` for ``ping``).
        needs: :data:`PUBLIC`, :data:`SESSION`, or the scope name the session must hold.
        handler: ``handler(broker, conn, params, request_id)`` -> result; raises RpcError.
        decoder: a msgspec JSON decoder for ``params``, built once.
        public: ``needs`` is :data:`PUBLIC` (no session is checked).
        scope: the scope to require, or None (PUBLIC, or any session will do).
    """

    name: str
    params: type
    result: type
    needs: str
    handler: Handler
    decoder: msgspec.json.Decoder[Any]
    public: bool
    scope: str | None


def _session(conn: Connection) -> Session:
    """The session the broker already checked (``needs`` is SESSION or a scope)."""
    s = conn.session
    assert s is not None
    return s


# ------------------------------------------------------------------ public
def ping(b: Broker, conn: Connection, _: p.NoParams, rid: p.RequestId) -> str:
    """``ping``: ``"pong"``."""
    return "pong"


def get_token(b: Broker, conn: Connection, prm: p.GetTokenParams, rid: p.RequestId) -> p.TokenResult:
    """``get_token``: a new session for ``instance_id`` (or, with ``if_taken = "suffix"``, for
    the name :meth:`~parrot_ipc.core.names.Names.pick` chose); the caller's UID owns the name
    from now on; mail waiting for it is delivered. Raises the errors of ``Names.pick`` and
    :meth:`~parrot_ipc.core.sessions.Sessions.get_token`."""
    b.sessions.check_secret_proof(conn, prm.instance_id, prm.shared_secret_proof)  # before any name lookup
    name = b.names.pick(conn, prm.instance_id, prm.if_taken)
    token, s = b.sessions.get_token(conn, name)
    b.names.claim(conn, name, "get_token")
    b.delivery.deliver(s.instance_id)
    return p.TokenResult(token=token, instance_id=s.instance_id, expires_at=rfc3339(s.expires_at),
                         scopes=sorted(s.scopes))


def authenticate(b: Broker, conn: Connection, prm: p.AuthenticateParams, rid: p.RequestId) -> p.AuthResult:
    """``authenticate``: bind this connection to an existing session by its token."""
    s = b.sessions.authenticate(conn, prm.token)
    return p.AuthResult(instance_id=s.instance_id, expires_at=rfc3339(s.expires_at),
                        scopes=sorted(s.scopes & conn.admission.scopes))


# ------------------------------------------------------------------ session
def whoami(b: Broker, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.WhoamiResult:
    """``whoami``: the session and the kernel's view of the peer."""
    s, peer = _session(conn), conn.peer
    return p.WhoamiResult(instance_id=s.instance_id, uid=peer.uid, gid=peer.gid, pid=peer.pid,
                          scopes=sorted(s.scopes & conn.admission.scopes), expires_at=rfc3339(s.expires_at))


def send(b: Broker, conn: Connection, prm: p.SendParams, rid: p.RequestId) -> p.SendResult:
    """``send``: queue one message (following rename forwards) and deliver it.

    A repeated ``idempotency_key`` from the same sender within ``idempotency_ttl_s`` returns
    the first result. Raises -32002 ``recipient_not_allowed`` (the admission's
    ``may_send_to`` refuses the name asked for or the forward target) and the mailbox errors
    of :meth:`~parrot_ipc.core.delivery.Delivery.enqueue`.
    """
    sender, now, store = _session(conn).instance_id, b.clock(), b.store
    key = prm.idempotency_key
    hit = None if key is None else store.get_idempotent(sender, key, now)
    if hit is not None:
        return hit
    if "@" in prm.to:
        return _send_addressed(b, conn, sender, prm, now)
    target, forwarded = b.delivery.resolve(prm.to, now)
    adm = conn.admission
    if not (adm.may_send(prm.to) and adm.may_send(target)):
        b.audit("send_denied", {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": sender,
                                "to": prm.to, "rule": adm.rule})
        raise RpcError(ErrorCode.FORBIDDEN, "recipient_not_allowed",
                       f"This peer may not send to {prm.to!r}.", to=prm.to)
    msg = b.delivery.enqueue(sender, target, prm.content, prm.data, now, prm.reply_to,
                             sender_uid=conn.peer.uid)
    b.stats.count(queued=1)
    result = p.SendResult(id=msg.id, to=target, status="forwarded" if forwarded else "queued")
    if key is not None:
        store.put_idempotent(sender, key, result, now + b.config.idempotency_ttl_s)
    log.debug("send %s -> %s id=%s", sender, target, msg.id)
    b.delivery.deliver(target)
    return result


def _send_addressed(b: Broker, conn: Connection, sender: str, prm: p.SendParams, now: float) -> p.SendResult:
    """``send`` to ``name@node``: to the outbox if ``node`` is another broker, else as a send to
    the bare local ``name`` (docs/federation.md)."""
    if federation.remote_node(b, prm.to) is None:
        return send(b, conn, msgspec.structs.replace(prm, to=federation.split_address(prm.to)[0]), 0)
    result = federation.send_remote(b, conn, sender, prm, now)
    if prm.idempotency_key is not None:
        b.store.put_idempotent(sender, prm.idempotency_key, result, now + b.config.idempotency_ttl_s)
    return result


def broadcast(b: Broker, conn: Connection, prm: p.BroadcastParams, rid: p.RequestId) -> p.BroadcastResult:
    """``broadcast``: queue the message for every other live instance this peer may send to;
    a full mailbox is skipped and not listed."""
    sender, now, delivery = _session(conn).instance_id, b.clock(), b.delivery
    recipients = []
    for name in sorted(b.store.instance_ids()):
        if name == sender or not delivery.held(name, now) or not conn.admission.may_send(name):
            continue
        try:
            delivery.enqueue(sender, name, prm.content, prm.data, now, sender_uid=conn.peer.uid)
        except RpcError:
            continue
        recipients.append(name)
        delivery.deliver(name)
    b.stats.count(queued=len(recipients))
    return p.BroadcastResult(id=b.ids.next(now), recipients=recipients)


def receive(b: Broker, conn: Connection, prm: p.ReceiveParams, rid: p.RequestId) -> p.ReceiveResult | WaitForMail:
    """``receive``: lease up to ``max`` messages; with none ready and ``wait_s`` > 0, a
    :class:`WaitForMail` for the shell."""
    msgs = b.delivery.lease(_session(conn).instance_id, prm.max)
    if msgs or prm.wait_s <= 0:
        return p.ReceiveResult(messages=msgs)
    return WaitForMail(rid, prm.max, prm.wait_s)


def ack(b: Broker, conn: Connection, prm: p.AckParams, rid: p.RequestId) -> p.AckResult:
    """``ack``: delete leased messages by id (ids not leased to this instance are ignored)."""
    acked = b.delivery.ack(_session(conn).instance_id, prm.ids)
    b.stats.count(acked=acked)
    return p.AckResult(acked=acked)


def list_instances(b: Broker, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.ListInstancesResult:
    """``list_instances``: every known instance with its online flag, last_seen and queue length."""
    now, store = b.clock(), b.store
    out = []
    for name in sorted(store.instance_ids()):
        holder = store.session_of(name)
        out.append(p.InstanceInfo(
            instance_id=name,
            online=holder is not None and holder.live(now) and b.bindings.online(name, holder),
            last_seen=rfc3339(store.last_seen(name) or now),
            queued=store.mailbox_usage(name)[0],
        ))
    return p.ListInstancesResult(instances=out)


def rename(b: Broker, conn: Connection, prm: p.RenameParams, rid: p.RequestId) -> p.RenameResult:
    """``rename``: see :meth:`~parrot_ipc.core.sessions.Sessions.rename`; pollers on the old
    name are woken and mail is delivered under the new one. The old name stays owned by this
    UID; the new one must be free or this UID's (-32006 ``instance_owned_by_other_uid``)."""
    b.names.check(conn, prm.new_id, "rename")
    old = b.sessions.rename(conn, _session(conn), prm.new_id)
    b.names.claim(conn, prm.new_id, "rename")
    b.delivery.emit(Wake(old))
    b.delivery.deliver(prm.new_id)
    return p.RenameResult(instance_id=prm.new_id, previous_id=old)


def subscribe(b: Broker, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.SubscribeResult:
    """``subscribe``: push ready mail to this connection as ``message`` notifications."""
    s = _session(conn)
    b.bindings.subscribe(conn)
    b.delivery.deliver(s.instance_id, wake=False)
    return p.SubscribeResult(subscribed=True)


def revoke(b: Broker, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.RevokeResult:
    """``revoke``: end this session; its token is dead."""
    b.sessions.kill(_session(conn), "revoked")
    return p.RevokeResult(revoked=True)


def get_resource(b: Broker, conn: Connection, prm: p.GetResourceParams, rid: p.RequestId) -> p.ResourceResult:
    """``get_resource``: one resource file's text and the hex SHA-256 of its bytes.

    Errors: -32602 ``bad_resource_name``; -32005 ``resource_not_found`` (no such file, or no
    reader); -32005 ``resource_refused`` (the file is unsafe or not UTF-8: the reason is logged
    and audited, not sent). See ``docs/protocol.md``, ``get_resource``.
    """
    name = prm.name
    fields = {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": conn.instance_id, "name": name}
    _require_resources(b, conn)
    if not p.valid_resource_name(name):
        raise RpcError(ErrorCode.INVALID_PARAMS, "bad_resource_name",
                       "A resource name is 1-64 of A-Z a-z 0-9 _ . -, starts alphanumeric, and has no '..'.")
    try:
        raw = None if b.resources is None else b.resources(name)
        content = None if raw is None else raw.decode("utf-8")
    except (ResourceRefused, UnicodeDecodeError) as exc:
        why = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        log.warning("refusing to serve resource %r: %s", name, why)
        b.audit("resource_refused", {**fields, "why": why})
        raise RpcError(ErrorCode.NOT_FOUND, "resource_refused",
                       f"The resource {name!r} cannot be served; the broker's log says why.") from None
    if raw is None or content is None:
        b.audit("resource_not_found", fields)
        raise RpcError(ErrorCode.NOT_FOUND, "resource_not_found", f"No resource named {name!r}.")
    digest = hashlib.sha256(raw).hexdigest()
    b.audit("resource_served", {**fields, "sha256": digest})
    return p.ResourceResult(name=name, content=content, sha256=digest)


def _require_resources(b: Broker, conn: Connection) -> None:
    """``get_resource`` needs the scope ``resources``: in the session and the admission when
    the connection has a session, else in the admission alone (issue 13: a bridge reads its
    instructions before it claims a name). Raises -32002 ``scope_missing`` (audited) or the
    session's -32001."""
    if conn.session is not None:
        b.sessions.require(conn, SCOPE_RESOURCES)
        return
    if SCOPE_RESOURCES not in conn.admission.scopes:
        b.audit("scope_denied", {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": None,
                                 "scope": SCOPE_RESOURCES})
        raise RpcError(ErrorCode.FORBIDDEN, "scope_missing",
                       f"This peer lacks the scope {SCOPE_RESOURCES!r}.", scope=SCOPE_RESOURCES)


def release(b: Broker, conn: Connection, prm: p.ReleaseParams, rid: p.RequestId) -> p.ReleaseResult:
    """``release``: the owner's UID frees a name (its session ends, its mail is deleted); see
    :meth:`~parrot_ipc.core.names.Names.release`."""
    return b.names.release(conn, prm.instance_id, admin=False)


# ------------------------------------------------------------------ admin
def admin_release(b: Broker, conn: Connection, prm: p.ReleaseParams, rid: p.RequestId) -> p.ReleaseResult:
    """``admin_release`` (admin): free a name whoever owns it; see
    :meth:`~parrot_ipc.core.names.Names.release`."""
    return b.names.release(conn, prm.instance_id, admin=True)


def list_sessions(b: Broker, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.ListSessionsResult:
    """``list_sessions`` (admin): every live session, never its token or hash."""
    now = b.clock()
    out = [
        p.SessionInfo(instance_id=s.instance_id, uid=s.uid, pid=s.pid, scopes=sorted(s.scopes),
                      expires_at=rfc3339(s.expires_at), online=b.bindings.online(s.instance_id, s),
                      bind="uid" if s.bound_pid is None else "process")
        for s in b.store.sessions() if s.live(now)
    ]
    out.sort(key=lambda i: i.instance_id)
    return p.ListSessionsResult(sessions=out)


def revoke_session(b: Broker, conn: Connection, prm: p.RevokeSessionParams, rid: p.RequestId) -> p.RevokeResult:
    """``revoke_session`` (admin): end the live session of ``instance_id``.

    Raises -32005 ``no_such_session`` when no live session holds it.
    """
    s = b.store.session_of(prm.instance_id)
    if s is None or not s.live(b.clock()):
        raise RpcError(ErrorCode.NOT_FOUND, "no_such_session", f"No live session holds {prm.instance_id!r}.")
    b.sessions.kill(s, f"revoked by admin uid {conn.peer.uid}")
    return p.RevokeResult(revoked=True)


def admin_stats(b: Broker, conn: Connection, prm: p.AdminStatsParams, rid: p.RequestId) -> p.AdminStatsResult:
    """``admin_stats`` (admin): counters, rates, connections per UID, instances and the last
    ``max_events`` audit events (:class:`~parrot_ipc.core.stats.Stats`). Metadata only."""
    st, now = b.stats, b.clock()
    rate_in, rate_out = st.rates()
    recent = list(st.recent)[-prm.max_events:] if prm.max_events else []
    return p.AdminStatsResult(
        now=rfc3339(now), started_at=rfc3339(st.started), uptime_s=round(now - st.started, 3),
        connections=b.connections,
        connections_by_uid=[p.UidConnections(uid=u, connections=n) for u, n in sorted(b.connections_by_uid().items())],
        live_sessions=b.live_sessions(), instances=list_instances(b, conn, p.NoParams(), rid).instances,
        messages_in_total=st.messages_in, messages_out_total=st.messages_out,
        messages_in_per_s=rate_in, messages_out_per_s=rate_out, rate_window_s=float(st.window_s),
        audit_counts=dict(st.event_counts),
        recent_events=[p.AuditEvent(ts=rfc3339(ts), event=ev, fields=f) for ts, ev, f in recent],
    )


# ------------------------------------------------------------------ the table
def _spec(name: str, handler: Handler, params: type, result: type) -> MethodSpec:
    needs = METHOD_NEEDS[name]
    scope = None if needs in (PUBLIC, SESSION) else needs
    return MethodSpec(name, params, result, needs, handler, msgspec.json.Decoder(params), needs == PUBLIC, scope)


#: Every method of protocol v1 this broker serves, by JSON-RPC method name
#: (``docs/protocol.md``, "Methods"; ``list_sessions``, ``revoke_session`` and
#: ``admin_release`` are admin).
METHOD_TABLE: Final[dict[str, MethodSpec]] = {m.name: m for m in (
    _spec("ping", ping, p.NoParams, str),
    _spec("get_token", get_token, p.GetTokenParams, p.TokenResult),
    _spec("authenticate", authenticate, p.AuthenticateParams, p.AuthResult),
    _spec("whoami", whoami, p.NoParams, p.WhoamiResult),
    _spec("send", send, p.SendParams, p.SendResult),
    _spec("broadcast", broadcast, p.BroadcastParams, p.BroadcastResult),
    _spec("receive", receive, p.ReceiveParams, p.ReceiveResult),
    _spec("ack", ack, p.AckParams, p.AckResult),
    _spec("list_instances", list_instances, p.NoParams, p.ListInstancesResult),
    _spec("rename", rename, p.RenameParams, p.RenameResult),
    _spec("subscribe", subscribe, p.NoParams, p.SubscribeResult),
    _spec("revoke", revoke, p.NoParams, p.RevokeResult),
    _spec("get_resource", get_resource, p.GetResourceParams, p.ResourceResult),
    _spec("list_sessions", list_sessions, p.NoParams, p.ListSessionsResult),
    _spec("revoke_session", revoke_session, p.RevokeSessionParams, p.RevokeResult),
    _spec("admin_stats", admin_stats, p.AdminStatsParams, p.AdminStatsResult),
    _spec("release", release, p.ReleaseParams, p.ReleaseResult),
    _spec("admin_release", admin_release, p.ReleaseParams, p.ReleaseResult),
    _spec("list_nodes", federation.list_nodes, p.NoParams, p.ListNodesResult),
    _spec("relay_take", federation.relay_take, p.RelayTakeParams, p.ReceiveResult),
    _spec("relay_ack", federation.relay_ack, p.RelayAckParams, p.AckResult),
    _spec("relay_deliver", federation.relay_deliver, p.RelayDeliverParams, p.RelayDeliverResult),
)}

#: The method names of protocol v1 this broker serves, in table order.
METHODS: Final = tuple(METHOD_TABLE)

#: What the broker answers while its store is still opening (issue 14: the mailboxes of a large
#: store are read in a worker thread; ``get_token`` needs only sessions and names, read first).
OPENING_METHODS: Final = frozenset({"ping", "get_token"})


class _MethodOnly(msgspec.Struct):
    method: str


_method_only = msgspec.json.Decoder(_MethodOnly)


def answers_while_opening(frame: bytes) -> bool:
    """True if ``frame`` (one NDJSON frame) is a request for one of :data:`OPENING_METHODS`;
    False for anything else (other methods, batches, frames that are not JSON-RPC), which the
    shell holds until the store is open."""
    try:
        return _method_only.decode(frame).method in OPENING_METHODS
    except msgspec.MsgspecError:
        return False
