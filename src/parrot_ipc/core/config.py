"""Broker settings with their units and defaults (``docs/protocol.md`` names each one)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct, field

from .framing import DEFAULT_MAX_FRAME_BYTES

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]


class BrokerConfig(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Tunables of one broker. Every field's unit is in its name.

    Decoded from the ``[server]`` table of the config file (TOML) with msgspec, so an unknown
    key or a wrong type is an error that names the key.
    """

    socket: str | None = None
    socket_group: str | None = None
    shared_secret_file: str | None = None
    max_secret_failures: PositiveInt = 5
    secret_failure_window_s: PositiveFloat = 60.0
    max_frame_bytes: PositiveInt = DEFAULT_MAX_FRAME_BYTES
    token_ttl_s: PositiveFloat = 86400.0
    lease_s: PositiveFloat = 60.0
    rename_forward_s: PositiveFloat = 7200.0
    rename_interval_s: Annotated[float, Meta(ge=0)] = 3600.0
    idempotency_ttl_s: PositiveFloat = 86400.0
    handshake_timeout_s: PositiveFloat = 10.0
    idle_timeout_s: PositiveFloat = 300.0
    max_mailbox_messages: PositiveInt = 10_000
    max_mailbox_bytes: PositiveInt = 64 * 1024 * 1024
    #: Sender quota (issue 14; dbus-broker's ``user_charge``): messages and bytes one sending
    #: UID may have queued in mailboxes other than its own, in all; -32007
    #: ``sender_quota_exceeded`` beyond.
    max_sender_queued_messages: PositiveInt = 50_000
    max_sender_queued_bytes: PositiveInt = 256 * 1024 * 1024
    #: Mailboxes for names nobody holds (no live session), at most; -32007 beyond.
    max_unclaimed_mailboxes: PositiveInt = 1000
    #: Unread mail to a name nobody holds is deleted this many seconds after it was sent.
    unclaimed_mail_ttl_s: PositiveFloat = 7 * 86400.0
    #: "normal": SQLite synchronous=NORMAL in WAL mode (survives a broker crash);
    #: "fsync": synchronous=FULL (also survives power loss). See docs/durability.md.
    durability: Literal["normal", "fsync"] = "normal"
    #: Bytes of message bodies the SQLite store keeps cached in memory (issue 14: every
    #: message lives in SQLite; this cache only saves reads). 0 caches nothing.
    store_cache_bytes: Annotated[int, Meta(ge=0)] = 8 * 1024 * 1024
    #: Responses (and pushes) queued for one connection before the broker stops reading it.
    max_pending_responses: PositiveInt = 256
    #: Unsent output bytes queued for one connection before the broker stops reading it; a
    #: subscriber past this bound with pushes pending is dropped (its mail stays leased).
    max_pending_bytes: PositiveInt = 4 * 1024 * 1024
    #: Open sockets in all (RLIMIT_NOFILE is raised to fit at start-up).
    max_connections: PositiveInt = 10_000
    #: Admitted connections per peer UID; past it: -32003 ``too_many_connections``.
    max_connections_per_uid: PositiveInt = 1024
    #: Per-UID token bucket over all frames: ``rate_per_s`` tokens a second, up to ``burst``.
    rate_per_s: PositiveFloat = 2000.0
    burst: PositiveFloat = 4000.0
    push_window: PositiveInt = 100
    #: Requests in one JSON-RPC batch (a JSON array frame), at most; past it, one -32600
    #: ``batch_too_long`` (JSON-RPC 2.0 section 6; ``docs/protocol.md``, "Batches").
    max_batch_length: PositiveInt = 100
    shutdown_grace_s: PositiveFloat = 5.0
    #: Directory of the files ``get_resource`` serves (one file per resource name). It and its
    #: files must be owned by root or the broker's user and not writable by group or others,
    #: like the config file. Read at start; the files are read on each request.
    resources_dir: str = "/etc/parrot-ipc/resources"
    #: Seconds after which a name nobody holds, with an empty mailbox and no forward, stops
    #: being owned by its UID (issue 13). 0: never (the default).
    name_idle_release_s: Annotated[float, Meta(ge=0)] = 0.0
    #: The user the clients accept as the broker, besides root and themselves (issue 13): a
    #: client reads SO_PEERCRED on its connection before sending anything and refuses any other
    #: listener. Clients read it from this file's ``[server]`` table (or
    #: ``$PARROT_IPC_BROKER_USER``); ignored if no such user exists.
    broker_user: str = "parrot-mcp"
    #: This broker's node name, the ``host`` of ``name@host`` addresses (docs/federation.md).
    #: None: federation is off and a send to ``name@host`` is -32602 ``federation_off``.
    node: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")] | None = None


Scope = Literal["send", "receive", "list", "rename", "broadcast", "admin", "resources", "remote_send", "relay"]
InstancePattern = Annotated[str, Meta(min_length=1, max_length=64)]


class PeerRuleConfig(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One ``[[peers]]`` table as written in the config file (names not yet resolved).

    At least one of ``users``, ``uids``, ``groups``, ``gids`` must be given. ``executables``
    are fnmatch(3) patterns for ``/proc/<pid>/exe``. Defaults: every scope but ``admin``;
    ``may_send_to = ["*"]``; ``bind = "uid"``.
    """

    name: str | None = None
    users: list[str] = []
    uids: list[Annotated[int, Meta(ge=0)]] = []
    groups: list[str] = []
    gids: list[Annotated[int, Meta(ge=0)]] = []
    executables: list[Annotated[str, Meta(pattern="^/")]] = []
    scopes: list[Scope] = field(
        default_factory=lambda: ["send", "receive", "list", "rename", "broadcast", "resources"])
    may_send_to: list[InstancePattern] = field(default_factory=lambda: ["*"])
    bind: Literal["uid", "process"] = "uid"
    #: fnmatch(3) patterns of the instance ids this rule's peers may claim; ``{user}`` is the
    #: peer's login name (``["{user}-*"]``). Default: any name.
    names: list[InstancePattern] = field(default_factory=lambda: ["*"])


class RemoteRuleConfig(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One ``[[remote]]`` table: remote ``nodes`` (fnmatch(3) patterns, at least one) whose
    mail may be delivered to local ``names`` (patterns; default every name). See
    docs/federation.md."""

    name: str | None = None
    nodes: Annotated[list[InstancePattern], Meta(min_length=1)]
    names: list[InstancePattern] = field(default_factory=lambda: ["*"])


class RelayConfig(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The ``[relay]`` table: how ``parrot-ipc relay`` reaches NATS (docs/federation.md).

    ``servers``: NATS URLs (``tls://`` for TLS); ``credentials_file``: a NATS credentials file
    (user JWT and nkey seed), which must be private to the relay's user (0600 or 0400, like a
    secret file); ``tls_ca_file``/``tls_cert_file``/``tls_key_file``: the CA that signs the
    server and the relay's own certificate and key; ``stream``: the JetStream stream
    (subjects ``parrot.>``); ``batch``: messages per round (1-1000); ``ack_wait_s``: seconds
    JetStream waits for the relay's ack before it redelivers; ``create_stream``: create the
    stream when it is missing.
    """

    servers: Annotated[list[str], Meta(min_length=1)] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    credentials_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    stream: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "PARROT"
    batch: Annotated[int, Meta(ge=1, le=1000)] = 100
    ack_wait_s: PositiveFloat = 30.0
    create_stream: bool = True


class ConfigFile(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The whole config file (TOML). ``peers`` is None when the file has no ``[[peers]]``:
    then the default policy applies (the broker's UID and root)."""

    server: BrokerConfig = BrokerConfig()
    peers: list[PeerRuleConfig] | None = None
    #: The ``[[remote]]`` tables (docs/federation.md); none: no remote node may deliver here.
    remote: list[RemoteRuleConfig] = []
    #: The ``[relay]`` table, read by ``parrot-ipc relay`` only.
    relay: RelayConfig = RelayConfig()
