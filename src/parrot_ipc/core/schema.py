"""The params and results of every method of protocol v1, as msgspec Structs.

Source: ``docs/protocol.md`` ("Methods": one row per method with its params and result;
"Envelope": unknown params fields are -32602). Field names are the wire names (``from_`` is
``from``). Every Struct decodes and validates in one pass; the pattern and length bounds here
are the protocol's. :mod:`parrot_ipc.core.protocol` re-exports every name.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from msgspec import UNSET, Meta, Struct, UnsetType, field

from .policy import (
    SCOPE_ADMIN,
    SCOPE_BROADCAST,
    SCOPE_LIST,
    SCOPE_RECEIVE,
    SCOPE_RENAME,
    SCOPE_SEND,
)

__all__ = [
    "ADDRESS_PATTERN",
    "INSTANCE_ID_PATTERN",
    "METHOD_NEEDS",
    "NODE_PATTERN",
    "PUBLIC",
    "RESOURCE_NAME_PATTERN",
    "SESSION",
    "AckParams",
    "AckResult",
    "AdminStatsParams",
    "AuthResult",
    "AuthenticateParams",
    "BroadcastParams",
    "BroadcastResult",
    "GetResourceParams",
    "GetTokenParams",
    "IfTaken",
    "InstanceId",
    "InstanceInfo",
    "ListInstancesResult",
    "Message",
    "NoParams",
    "ReceiveParams",
    "ReceiveResult",
    "ReleaseParams",
    "ReleaseResult",
    "RenameParams",
    "RenameResult",
    "ResourceName",
    "ResourceResult",
    "RevokeResult",
    "RevokeSessionParams",
    "SendParams",
    "SendResult",
    "SubscribeResult",
    "TokenResult",
    "WhoamiResult",
    "valid_resource_name",
]

INSTANCE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
InstanceId = Annotated[str, Meta(pattern=INSTANCE_ID_PATTERN)]
#: A resource name: one file name in ``resources_dir``, never a path (no ``/``, no leading dot).
RESOURCE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ResourceName = Annotated[str, Meta(pattern=RESOURCE_NAME_PATTERN)]
#: A broker's node name (``[server] node``): one NATS subject token, so no ``.`` (docs/federation.md).
NODE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
Node = Annotated[str, Meta(pattern=NODE_PATTERN)]
#: Where ``send`` may go: a local instance id, or ``name@node`` (added by issue 18).
ADDRESS_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(@[A-Za-z0-9][A-Za-z0-9_-]{0,63})?$"
Address = Annotated[str, Meta(pattern=ADDRESS_PATTERN)]


# --------------------------------------------------------------------------- params
class _Params(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for params: unknown fields are -32602 (``docs/protocol.md``, Envelope)."""


class NoParams(_Params):
    """The params of a method that takes none: ``{}`` or left out; any member is -32602."""


#: What ``get_token`` does when a live session of the caller's own UID, with a connection
#: bound, holds the name (``docs/protocol.md``, "Sessions of one owner"): ``"replace"`` takes
#: it over (protocol v1, the default); ``"suffix"`` takes the first free ``NAME-2`` ..
#: ``NAME-32`` instead; ``"fail"`` answers -32006 ``instance_taken``.
IfTaken = Literal["replace", "suffix", "fail"]


class GetTokenParams(_Params):
    """``get_token``: the instance to take (:data:`INSTANCE_ID_PATTERN`), and, in claude-ipc
    compatibility mode, ``shared_secret_proof`` = hex HMAC-SHA256(secret, instance_id), at most
    128 characters (``docs/protocol.md``, Semantics). ``if_taken`` (:data:`IfTaken`, added by
    issue 13) says what to do when a connected session of the same UID holds the name."""

    instance_id: InstanceId
    shared_secret_proof: Annotated[str, Meta(max_length=128)] | None = None
    if_taken: IfTaken = "replace"


class AuthenticateParams(_Params):
    """``authenticate``: a token from an earlier ``get_token`` (1-256 characters)."""

    token: Annotated[str, Meta(min_length=1, max_length=256)]


class SendParams(_Params):
    """``send``: ``to`` (an instance id, or ``name@node`` for another broker: docs/federation.md), ``content`` (any string), optional ``data`` (a JSON
    object), ``reply_to`` (a message id: 1-64 of ``A-Z a-z 0-9 _ . : -``) and ``idempotency_key`` (1-128 characters; a repeat within ``idempotency_ttl_s`` from
    the same sender returns the first result). ``from``/``from_id`` are accepted and ignored."""

    to: Address
    content: str
    data: dict[str, Any] | None = None
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    #: The id of the message this one answers (1-64 of ``A-Z a-z 0-9 _ . : -``, so it is safe to
    #: show inside a tag; not checked to exist: it may be acked already). Added by issue 15.
    reply_to: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] | None = None
    # Accepted and ignored: the sender is always the session (claude-ipc compatibility).
    from_: Any = field(default=None, name="from")
    from_id: Any = None


class BroadcastParams(_Params):
    """``broadcast``: ``content`` and optional ``data``, sent to every other live instance."""

    content: str
    data: dict[str, Any] | None = None


class ReceiveParams(_Params):
    """``receive``: lease up to ``max`` messages (1-1000, default 100); wait up to ``wait_s``
    seconds (0-300, default 0: answer at once) when none is ready."""

    max: Annotated[int, Meta(ge=1, le=1000)] = 100
    wait_s: Annotated[float, Meta(ge=0, le=300)] = 0.0


class AckParams(_Params):
    """``ack``: up to 1000 message ids (each at most 64 characters) to delete from the mailbox."""

    ids: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=1000)]


class RenameParams(_Params):
    """``rename``: the instance id to move this session, its mailbox and its name to."""

    new_id: InstanceId


class RevokeSessionParams(_Params):
    """``revoke_session`` (admin): the instance whose live session to end."""

    instance_id: InstanceId


class AdminStatsParams(_Params):
    """``admin_stats`` (admin): how many recent audit events to return (0-100, default 20)."""

    max_events: Annotated[int, Meta(ge=0, le=100)] = 20
class ReleaseParams(_Params):
    """``release`` and ``admin_release``: the name to free (:data:`INSTANCE_ID_PATTERN`)."""

    instance_id: InstanceId


class GetResourceParams(_Params):
    """``get_resource``: one resource name (:data:`RESOURCE_NAME_PATTERN`), never a path."""

    name: ResourceName


# --------------------------------------------------------------------------- results
class Message(Struct, kw_only=True, omit_defaults=True):
    """One message. ``id`` sorts by arrival; ``sent_at`` is RFC 3339 UTC; ``reply_to`` (left
    out when unset) is the id of the message it answers, as the sender gave it."""

    id: str
    from_: str = field(name="from")
    to: str
    content: str
    data: dict[str, Any] | UnsetType = UNSET
    sent_at: str
    reply_to: str | UnsetType = UNSET


class TokenResult(Struct, kw_only=True):
    """``get_token``: the new token (43 characters of URL-safe base64, shown once), its
    instance, its expiry (RFC 3339 UTC) and its scopes, sorted."""

    token: str
    instance_id: str
    expires_at: str
    scopes: list[str]


class AuthResult(Struct, kw_only=True):
    """``authenticate``: the session's instance, expiry (RFC 3339 UTC) and effective scopes
    (the session's scopes that the connection's admission also grants), sorted."""

    instance_id: str
    expires_at: str
    scopes: list[str]


class WhoamiResult(Struct, kw_only=True):
    """``whoami``: the session's instance, the peer's uid/gid/pid (from SO_PEERCRED), the
    effective scopes (sorted) and the expiry (RFC 3339 UTC)."""

    instance_id: str
    uid: int
    gid: int
    pid: int
    scopes: list[str]
    expires_at: str


class SendResult(Struct, kw_only=True):
    """``send``: the message id, the mailbox it went to (after rename forwards), and
    ``"forwarded"`` if a forward was followed, else ``"queued"``."""

    id: str
    to: str
    status: Literal["queued", "forwarded"]


class BroadcastResult(Struct, kw_only=True):
    """``broadcast``: one id for the broadcast, and the instances it was queued for, sorted
    (a full mailbox is skipped and not listed)."""

    id: str
    recipients: list[str]


class ReceiveResult(Struct, kw_only=True):
    """``receive``: the leased messages, oldest first (possibly none)."""

    messages: list[Message]


class AckResult(Struct, kw_only=True):
    """``ack``: how many of the given ids were leased to this instance and are now deleted."""

    acked: int


class InstanceInfo(Struct, kw_only=True):
    """One row of ``list_instances``: ``online`` means a connection is bound to its live
    session; ``last_seen`` is RFC 3339 UTC; ``queued`` counts its mailbox's messages."""

    instance_id: str
    online: bool
    last_seen: str
    queued: int


class ListInstancesResult(Struct, kw_only=True):
    """``list_instances``: every known instance, sorted by id."""

    instances: list[InstanceInfo]


class RenameResult(Struct, kw_only=True):
    """``rename``: the new instance id and the one it replaced."""

    instance_id: str
    previous_id: str


class SubscribeResult(Struct, kw_only=True):
    """``subscribe``: always ``subscribed=True``; ``message`` notifications follow."""

    subscribed: bool


class RevokeResult(Struct, kw_only=True):
    """``revoke`` and ``revoke_session``: always ``revoked=True``."""

    revoked: bool


class ReleaseResult(Struct, kw_only=True):
    """``release`` and ``admin_release``: the name freed, the UID that owned it, and how many
    messages left in its mailbox were deleted (never handed to the next owner)."""

    instance_id: str
    owner_uid: int
    dropped: int


class ResourceResult(Struct, kw_only=True):
    """``get_resource``: the resource's text (UTF-8) and the hex SHA-256 of its bytes."""

    name: str
    """The resource's name, as asked (a :func:`valid_resource_name`)."""
    content: str
    """The file's text, decoded as UTF-8."""
    sha256: str
    """The SHA-256 of the file's bytes, as 64 lowercase hex digits."""


# --------------------------------------------------------------------------- names
_RESOURCE_NAME_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def valid_resource_name(name: object) -> bool:
    """True if ``name`` is a safe resource name: it matches :data:`RESOURCE_NAME_PATTERN`
    (1-64 of ``A-Z a-z 0-9 _ . -``, first one alphanumeric) and holds no ``..``.

    Such a name is one directory entry: no ``/``, no NUL, not ``.`` or ``..``.
    """
    return (isinstance(name, str) and 1 <= len(name) <= 64 and name[0].isascii() and name[0].isalnum()
            and set(name) <= _RESOURCE_NAME_CHARS and ".." not in name)


# --------------------------------------------------------------------------- needs
#: What a method needs: any admitted peer, no session (``docs/protocol.md``: "admitted peer").
PUBLIC: Final = "public"
#: What a method needs: a live session, no particular scope.
SESSION: Final = "session"

#: What each method of protocol v1 needs, by JSON-RPC method name: :data:`PUBLIC`,
#: :data:`SESSION`, or the scope the session must hold (:mod:`parrot_ipc.core.policy`).
#: Source: ``docs/protocol.md`` ("Methods"). The broker's method table and both clients read it.
METHOD_NEEDS: Final[dict[str, str]] = {
    "ping": PUBLIC,
    "get_token": PUBLIC,
    "authenticate": PUBLIC,
    "whoami": SESSION,
    "send": SCOPE_SEND,
    "broadcast": SCOPE_BROADCAST,
    "receive": SCOPE_RECEIVE,
    "ack": SESSION,
    "list_instances": SCOPE_LIST,
    "rename": SCOPE_RENAME,
    "subscribe": SCOPE_RECEIVE,
    "revoke": SESSION,
    # Issue 13: an admitted peer whose rule grants ``resources`` reads without a session (the
    # handler checks the scope), so a bridge fetches its instructions without claiming a name.
    "get_resource": PUBLIC,
    "list_sessions": SCOPE_ADMIN,
    "revoke_session": SCOPE_ADMIN,
    "admin_stats": SCOPE_ADMIN,
    "release": PUBLIC,
    "admin_release": SCOPE_ADMIN,
    # The relay's methods need no session: the handlers check that the connection's admission
    # grants SCOPE_RELAY (docs/federation.md).
    "list_nodes": SCOPE_LIST,
    "relay_take": PUBLIC,
    "relay_ack": PUBLIC,
    "relay_deliver": PUBLIC,
}
