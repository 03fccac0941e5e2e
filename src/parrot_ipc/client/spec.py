"""One spec per JSON-RPC method of protocol v1, from which both clients get their methods.

Each entry of :class:`Methods` is a :class:`Method`: the method's name, its params Struct and
result Struct from :mod:`parrot_ipc.core.protocol`, what it needs (``"public"``, ``"session"``
or a scope), a builder whose signature *is* the client method's signature, and how the result
Struct is unwrapped (``ack`` returns ``acked``, an int). :class:`Method` is a descriptor:

- on a :class:`BlockingCalls` (the base of :class:`parrot_ipc.Client`) ``client.send`` is a
  ``Callable[P, SendResult]``: the call blocks;
- on a :class:`TrioCalls` (the base of :class:`parrot_ipc.AsyncClient`) it is a
  ``Callable[P, Coroutine[..., SendResult]]``: ``await client.send(...)``.

Each client implements only ``_run(call) -> R`` (send one :class:`Call`, wait for its
response, decode it); every method is written once, here, and mypy sees its real parameter
and result types through the descriptor's overloaded ``__get__``.

Source: ``docs/protocol.md`` (Methods, Error codes), the JSON-RPC 2.0 specification.
Every method raises :class:`parrot_ipc.ParrotError` when the broker answers an error (-32001
without a session or with a dead token, -32002 without the scope it needs, -32602 for bad
params; others as listed), :class:`parrot_ipc.BrokerUnavailable` when the connection fails, and
a timeout (:class:`TimeoutError` for the blocking client, :class:`trio.TooSlowError` for the
trio one) after the client's ``timeout_s``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Final, Generic, ParamSpec, TypeVar, overload

import msgspec

from ..core import protocol as p
from ..core.schema import METHOD_NEEDS, PUBLIC

_astuple: Final = msgspec.structs.astuple
P = ParamSpec("P")
R = TypeVar("R")
W = TypeVar("W")
S = TypeVar("S", bound=msgspec.Struct)



def _then(decode: Callable[[bytes], W], unwrap: Callable[[W], R]) -> Callable[[bytes], R]:
    return lambda raw: unwrap(decode(raw))


class Call(Generic[R]):
    """One request ready to go: ``method``, wire ``params`` (a dict, or None for none), how to
    ``decode`` the raw ``result`` bytes into ``R``, and ``wait_s``, seconds the broker may
    hold the response on purpose (a long-poll ``receive``) on top of the client's timeout."""

    __slots__ = ("decode", "method", "params", "wait_s")

    def __init__(self, method: str, params: dict[str, Any] | None, decode: Callable[[bytes], R],
                 wait_s: float = 0.0) -> None:
        self.method = method
        self.params = params
        self.decode = decode
        self.wait_s = wait_s


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def raw_call(method: str, params: dict[str, Any] | None, result_type: Any) -> Call[Any]:
    """A :class:`Call` for any method by name, its result decoded as ``result_type`` (a type
    msgspec decodes; ``Any`` gives plain JSON values). The decoder is built once per type."""
    dec = _DECODERS.get(result_type)
    if dec is None:
        dec = _DECODERS[result_type] = msgspec.json.Decoder(result_type)
    return Call(method, params, dec.decode)


class Method(Generic[P, R]):
    """The spec of one JSON-RPC method, and the descriptor that makes it a client method.

    Args:
        name: the JSON-RPC method name.
        params: its params Struct (:mod:`parrot_ipc.core.protocol`), e.g. ``SendParams``.
        build: takes the client method's arguments and returns a ``params`` instance (or None
            for a method without params); its signature and docstring become the method's.
        result: the result Struct (or ``str`` for ``ping``) the response is decoded as.
        unwrap: turns the decoded result into what the method returns (default: itself).

    ``needs`` (``"public"``, ``"session"`` or a scope) is read from
    :data:`parrot_ipc.core.schema.METHOD_NEEDS`, the table the broker checks too; a ``name``
    not in it raises :class:`KeyError` (at import).

    ``params`` members that are None are left out of the request (they are optional in the
    schema). A ``params`` with a ``wait_s`` field (``receive``) extends the response timeout
    by that many seconds.
    """

    @overload
    def __init__(self: Method[P, W], name: str, params: type[S], build: Callable[P, S | None],
                 result: type[W]) -> None: ...
    @overload
    def __init__(self, name: str, params: type[S], build: Callable[P, S | None], result: type[W],
                 unwrap: Callable[[W], R]) -> None: ...

    def __init__(self, name: str, params: type[msgspec.Struct], build: Callable[P, Any],
                 result: type[Any], unwrap: Callable[[Any], R] | None = None) -> None:
        self.name = name
        self.params = params
        self.result = result
        self.needs = METHOD_NEEDS[name]
        self.__doc__ = build.__doc__
        self._build: Callable[P, msgspec.Struct | None] = build
        self._signature = inspect.signature(build).replace(return_annotation=inspect.Signature.empty)
        self._names = tuple(f.encode_name for f in msgspec.structs.fields(params))  # wire names
        decode = msgspec.json.Decoder(result).decode
        self.decode: Callable[[bytes], R] = decode if unwrap is None else _then(decode, unwrap)

    @property
    def session(self) -> bool:
        """True if the method needs an authenticated session (any ``needs`` but ``public``)."""
        return self.needs != PUBLIC

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        """The :class:`Call` for these arguments (the request a client sends)."""
        prm = self._build(*args, **kwargs)
        if prm is None:
            return Call(self.name, None, self.decode)
        wire = {name: v for name, v in zip(self._names, _astuple(prm), strict=True) if v is not None}
        return Call(self.name, wire, self.decode, float(wire.get("wait_s", 0.0)))

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Method[P, R]: ...
    @overload
    def __get__(self, obj: BlockingCalls, owner: type[Any]) -> Callable[P, R]: ...
    @overload
    def __get__(self, obj: TrioCalls, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(self, obj: BlockingCalls | TrioCalls | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        run: Callable[[Call[R]], Any] = obj._run
        call = self.call

        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return run(call(*args, **kwargs))

        method.__name__ = method.__qualname__ = self.name
        method.__doc__ = self.__doc__
        vars(method)["__signature__"] = self._signature  # for help() and inspect.signature
        return method


# --------------------------------------------------------------------------- unwrappers
# What a method returns of its result Struct, where that is not the Struct itself.
def _messages(res: p.ReceiveResult) -> list[p.Message]:
    return res.messages


def _acked(res: p.AckResult) -> int:
    return int(res.acked)


def _instances(res: p.ListInstancesResult) -> list[p.InstanceInfo]:
    return res.instances


def _sessions(res: p.ListSessionsResult) -> list[p.SessionInfo]:
    return res.sessions


def _subscribed(res: p.SubscribeResult) -> bool:
    return bool(res.subscribed)


def _revoked(res: p.RevokeResult) -> bool:
    return bool(res.revoked)


# --------------------------------------------------------------------------- builders
# Each builder's signature and docstring become the client method's (docs/protocol.md, Methods).
def _ping() -> None:
    """Check that the broker answers; returns ``"pong"``. Needs no session."""


def _get_token(instance_id: str, *, shared_secret_proof: str | None = None,
               if_taken: p.IfTaken = "replace") -> p.GetTokenParams:
    """Take instance ``instance_id`` (1-64 of ``A-Z a-z 0-9 _ . -``) and get a fresh session
    token: ``TokenResult {token, instance_id, expires_at (RFC 3339 UTC), scopes}``. Any earlier
    token of that instance dies. ``shared_secret_proof``: hex HMAC-SHA256(secret, instance_id),
    only when the broker has a shared secret. ``if_taken`` (``"replace"``, ``"suffix"``,
    ``"fail"``): what to do when a connected session of your own UID holds the name; with
    ``"suffix"`` the result's ``instance_id`` may be ``NAME-2`` etc. -32006
    ``instance_owned_by_other_uid`` if another UID owns the name."""
    return p.GetTokenParams(instance_id=instance_id, shared_secret_proof=shared_secret_proof, if_taken=if_taken)


def _authenticate(token: str) -> p.AuthenticateParams:
    """Bind this connection to the session of ``token``: ``AuthResult {instance_id,
    expires_at, scopes}``. -32001 (``token_invalid``, ``token_expired``, ``token_revoked``,
    ``token_uid_mismatch``) if the broker will not take it."""
    return p.AuthenticateParams(token=token)


def _whoami() -> None:
    """This session as the broker sees it: ``WhoamiResult {instance_id, uid, gid, pid, scopes,
    expires_at}`` (the ids are the peer credentials from SO_PEERCRED)."""


def _send(to: str, content: str, *, data: dict[str, Any] | None = None,
          idempotency_key: str | None = None, reply_to: str | None = None) -> p.SendParams:
    """Send text ``content`` (and ``data``, a JSON object) to instance ``to``: ``SendResult
    {id, to, status}``, status ``"queued"`` or ``"forwarded"`` (``to`` was renamed). The sender
    is always the session. Repeating ``idempotency_key`` (1-128 chars) within 24 h returns the
    first message's id and queues nothing. ``reply_to``: the id of the message this answers
    (shown with it). -32007 if the mailbox is full."""
    return p.SendParams(to=to, content=content, data=data, idempotency_key=idempotency_key,
                        reply_to=reply_to)


def _broadcast(content: str, *, data: dict[str, Any] | None = None) -> p.BroadcastParams:
    """Send ``content`` (and ``data``) to every other instance holding a session:
    ``BroadcastResult {id, recipients}``."""
    return p.BroadcastParams(content=content, data=data)


def _receive(*, max: int = 100, wait_s: float = 0.0) -> p.ReceiveParams:
    """Lease up to ``max`` (1-1000) queued messages, oldest first, waiting up to ``wait_s``
    seconds (0-300) if none is queued: a list of :class:`Message` (maybe empty). A leased
    message not acked within the broker's ``lease_s`` is delivered again."""
    return p.ReceiveParams(max=max, wait_s=wait_s)


def _ack(ids: list[str]) -> p.AckParams:
    """Delete the leased messages ``ids`` (at most 1000); returns how many were acked."""
    return p.AckParams(ids=ids)


def _list_instances() -> None:
    """The instances the broker knows: a list of ``InstanceInfo {instance_id, online,
    last_seen, queued}``."""


def _rename(new_id: str) -> p.RenameParams:
    """Rename this session's instance to ``new_id``: ``RenameResult {instance_id,
    previous_id}``. Mail to the old name is forwarded for a while. -32003 with
    ``data.retry_after_s`` past one rename per ``rename_interval_s``; -32006 if taken."""
    return p.RenameParams(new_id=new_id)


def _subscribe() -> None:
    """Have new mail pushed as ``message`` notifications on this connection; returns True.
    Read them with ``Client.next_message`` or ``AsyncClient.messages``."""


def _revoke() -> None:
    """Revoke this session's token (every connection bound to it); returns True."""


def _get_resource(name: str) -> p.GetResourceParams:
    """Protected resource ``name`` (one file name, no path): ``ResourceResult {name, content,
    sha256}``, the text as UTF-8 and the hex SHA-256 of its bytes. -32005
    (``resource_not_found``, ``resource_refused``) if it cannot be served."""
    return p.GetResourceParams(name=name)


def _list_sessions() -> None:
    """Admin: the live sessions, a list of ``SessionInfo {instance_id, uid, pid, scopes,
    expires_at, online, bind}`` (never a token)."""


def _revoke_session(instance_id: str) -> p.RevokeSessionParams:
    """Admin: revoke the live session of ``instance_id`` on every connection; returns True.
    -32005 ``no_such_session`` if it has none."""
    return p.RevokeSessionParams(instance_id=instance_id)


def _admin_stats(*, max_events: int = 20) -> p.AdminStatsParams:
    """Admin: a snapshot for ``parrot-ipc top``: ``AdminStatsResult {now, started_at, uptime_s,
    connections, connections_by_uid, live_sessions, instances, messages_in_total,
    messages_out_total, messages_in_per_s, messages_out_per_s, rate_window_s, audit_counts,
    recent_events}`` with the last ``max_events`` (0-100) audit events. Metadata only."""
    return p.AdminStatsParams(max_events=max_events)


def _release(instance_id: str) -> p.ReleaseParams:
    """Free the name ``instance_id`` that your UID owns: its session ends and the mail left in
    it is deleted. ``ReleaseResult {instance_id, owner_uid, dropped}``. -32006 if another UID
    owns it, -32005 ``name_not_owned`` if nobody does."""
    return p.ReleaseParams(instance_id=instance_id)


def _admin_release(instance_id: str) -> p.ReleaseParams:
    """Admin: free the name ``instance_id`` whoever owns it (as :meth:`release`)."""
    return p.ReleaseParams(instance_id=instance_id)
def _list_nodes() -> None:
    """The remote nodes the broker had mail from since it started, most recent first: a list
    of ``NodeInfo {node, last_seen, delivered, refused}`` (docs/federation.md)."""


def _nodes(res: p.ListNodesResult) -> list[p.NodeInfo]:
    return res.nodes


def _relay_take(*, max: int = 100) -> p.RelayTakeParams:
    """Relay only (admission scope ``relay``, no session): lease up to ``max`` (1-1000) outbox
    messages, each ``to`` a ``name@node``: a list of :class:`Message` (docs/federation.md)."""
    return p.RelayTakeParams(max=max)


def _relay_ack(ids: list[str]) -> p.RelayAckParams:
    """Relay only: delete outbox messages ``ids`` (at most 1000) the remote side has taken;
    returns how many were deleted."""
    return p.RelayAckParams(ids=ids)


def _relay_deliver(id: str, node: str, from_: str, to: str, content: str, *,
                   data: dict[str, Any] | None = None, sent_at: str = "",
                   bounce: bool = False) -> p.RelayDeliverParams:
    """Relay only: queue message ``id`` from ``from_@node`` for local ``to``, once (the remote
    id is the idempotency key): ``RelayDeliverResult {status, id, reason}``, status
    ``delivered``, ``duplicate``, ``bounced`` or ``refused``."""
    return p.RelayDeliverParams(id=id, node=node, from_=from_, to=to, content=content, data=data,
                                sent_at=sent_at, bounce=bounce)


# --------------------------------------------------------------------------- the table
class Methods:
    """Every method of protocol v1, as descriptors (``docs/protocol.md``, Methods). The base of
    both clients, through :class:`BlockingCalls` and :class:`TrioCalls`."""

    ping = Method("ping", p.NoParams, _ping, str)
    get_token = Method("get_token", p.GetTokenParams, _get_token, p.TokenResult)
    authenticate = Method("authenticate", p.AuthenticateParams, _authenticate, p.AuthResult)
    whoami = Method("whoami", p.NoParams, _whoami, p.WhoamiResult)
    send = Method("send", p.SendParams, _send, p.SendResult)
    broadcast = Method("broadcast", p.BroadcastParams, _broadcast, p.BroadcastResult)
    receive = Method("receive", p.ReceiveParams, _receive, p.ReceiveResult, _messages)
    ack = Method("ack", p.AckParams, _ack, p.AckResult, _acked)
    list_instances = Method("list_instances", p.NoParams, _list_instances, p.ListInstancesResult,
                            _instances)
    rename = Method("rename", p.RenameParams, _rename, p.RenameResult)
    subscribe = Method("subscribe", p.NoParams, _subscribe, p.SubscribeResult, _subscribed)
    revoke = Method("revoke", p.NoParams, _revoke, p.RevokeResult, _revoked)
    get_resource = Method("get_resource", p.GetResourceParams, _get_resource, p.ResourceResult)
    list_sessions = Method("list_sessions", p.NoParams, _list_sessions, p.ListSessionsResult,
                           _sessions)
    revoke_session = Method("revoke_session", p.RevokeSessionParams, _revoke_session, p.RevokeResult,
                            _revoked)
    admin_stats = Method("admin_stats", p.AdminStatsParams, _admin_stats, p.AdminStatsResult)
    release = Method("release", p.ReleaseParams, _release, p.ReleaseResult)
    admin_release = Method("admin_release", p.ReleaseParams, _admin_release, p.ReleaseResult)
    list_nodes = Method("list_nodes", p.NoParams, _list_nodes, p.ListNodesResult, _nodes)
    relay_take = Method("relay_take", p.RelayTakeParams, _relay_take, p.ReceiveResult, _messages)
    relay_ack = Method("relay_ack", p.RelayAckParams, _relay_ack, p.AckResult, _acked)
    relay_deliver = Method("relay_deliver", p.RelayDeliverParams, _relay_deliver, p.RelayDeliverResult)


#: Every :class:`Method`, by JSON-RPC name.
METHODS: Final[dict[str, Method[..., Any]]] = {
    m.name: m for m in vars(Methods).values() if isinstance(m, Method)}


class BlockingCalls(Methods):
    """Base of a blocking client: the :class:`Methods` return their results directly."""

    def _run(self, call: Call[R]) -> R:
        raise NotImplementedError


class TrioCalls(Methods):
    """Base of a trio client: the :class:`Methods` return coroutines of their results."""

    async def _run(self, call: Call[R]) -> R:
        raise NotImplementedError
