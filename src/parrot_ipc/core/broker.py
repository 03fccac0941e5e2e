"""The broker facade: one object the shell drives with peers, frames and the passing of time.

Sans-I/O: :class:`Broker` takes already-read peer credentials and complete NDJSON frames, and
returns response frames plus *effects* (notifications to push to other connections, mailboxes to
wake long-pollers on, connections to drop). It never touches a socket, a file or a clock of its
own: time comes from the injected ``clock`` and randomness from the injected ``token_bytes``.

The work is done by one module per job: :mod:`.sessions` (tokens, binding, scopes),
:mod:`.delivery` (mailboxes, pushes, leases), :mod:`.limits` (rate limits and bounds),
:mod:`.methods` (the method table and handlers) and :mod:`.connection` (a connection's state).
Rules come from ``docs/protocol.md`` (protocol v1) and the JSON-RPC 2.0 specification.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec
from msgspec import UNSET, Raw

from ..errors import ErrorCode, RpcError
from ..store import MemoryStore, Store
from . import protocol as p
from .attest import recheck_exe
from .batch import handle_batch, is_batch, is_json
from .config import BrokerConfig
from .connection import Bindings, Connection
from .delivery import Delivery
from .effects import AuditSink, Drop, Effect, Push, WaitForMail, Wake, discard_audit
from .limits import ConnectionLimits, TokenBucket
from .methods import METHOD_TABLE, METHODS, MethodSpec
from .names import Names
from .policy import SCOPE_RECEIVE, PeerCredentials, Policy
from .quota import SenderQuota
from .sessions import Sessions, token_hash
from .stats import Stats
from .timefmt import IdGenerator

# Re-exported: these moved out of this module, and callers import them from here.
__all__ = [
    "METHODS",
    "AuditSink",
    "Broker",
    "Connection",
    "Drop",
    "Effect",
    "Push",
    "ResourceReader",
    "TokenBucket",
    "WaitForMail",
    "Wake",
    "token_hash",
]

log = logging.getLogger("parrot_ipc.broker")
#: Reads one resource by an already-validated name: its bytes, or None if there is no such
#: resource. Raises :class:`~parrot_ipc.errors.ResourceRefused` for a file it must not serve.
#: The OS layer provides it (:class:`parrot_ipc.os.resources.ResourceDir`); the core does no I/O.
ResourceReader = Callable[[str], bytes | None]

#: Seconds between purges of expired sessions, forwards, idempotency keys and unclaimed mail.
PURGE_INTERVAL_S: Final = 60.0


class Broker:
    """One broker's state and rules.

    Args:
        config: tunables (units in the field names); default :class:`BrokerConfig`.
        policy: decides at accept which peers are admitted, with which scopes.
        store: where sessions, mailboxes, forwards and idempotency keys live
            (default: a fresh :class:`MemoryStore`).
        clock: wall clock, seconds since the Unix epoch (injectable for tests).
        token_bytes: source of random bytes for tokens (default :func:`secrets.token_bytes`).
        audit: sink for security events ``(event, fields)``; fields never hold tokens,
            secrets or message content. Default :func:`~.effects.discard_audit` (drops them);
            the daemon passes its JSON-lines sink.
        shared_secret: optional bytes; when set, ``get_token`` needs
            ``shared_secret_proof`` = hex HMAC-SHA256(secret, instance_id).
        id_floor: the highest message id a durable store has seen (or None); new ids sort
            after it, so an id is never issued twice across restarts.
        resources: the reader behind ``get_resource`` (see :data:`ResourceReader`); None
            means the broker has no resources (every name is -32005).

    Every public method is total: a peer's bad input becomes an error frame, and a bug becomes
    -32603 with a logged traceback. None of them raise.
    """

    def __init__(
        self,
        *,
        config: BrokerConfig | None = None,
        policy: Policy,
        store: Store | None = None,
        clock: Callable[[], float],
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        audit: AuditSink = discard_audit,
        shared_secret: bytes | None = None,
        id_floor: str | None = None,
        resources: ResourceReader | None = None,
    ) -> None:
        config = config or BrokerConfig()
        store = store if store is not None else MemoryStore()
        self.config = config
        self.policy = policy
        self.store: Store = store
        #: The wall clock (epoch seconds), for the method handlers.
        self.clock = clock
        #: Counters and recent audit events for ``admin_stats``; it sees every audit event.
        self.stats = Stats(clock)
        audit = self.stats.tee(audit)
        #: The audit sink; also for the shell's own events (timeouts, drops).
        self.audit = audit
        #: The reader behind ``get_resource``, or None.
        self.resources = resources
        #: The message id generator (ids sort by arrival).
        self.ids = IdGenerator(floor_id=id_floor)
        #: The one owner of connection bindings and push windows.
        self.bindings = Bindings()
        #: Session rules (tokens, scopes, rename, revoke).
        self.sessions = Sessions(store=store, config=config, clock=clock, token_bytes=token_bytes,
                                 bindings=self.bindings, audit=audit, shared_secret=shared_secret)
        #: The sender quota (issue 14), over the store's per-UID sums.
        self.quota = SenderQuota(config, audit, store)
        #: Name ownership (issue 13): who owns which instance name.
        self.names = Names(store=store, config=config, clock=clock, bindings=self.bindings, audit=audit,
                           kill=self.sessions.kill)
        #: Mail delivery, and the effects queue.
        self.delivery = Delivery(store=store, config=config, clock=clock, bindings=self.bindings,
                                 ids=self.ids, audit=audit, quota=self.quota)
        #: Federation (issue 18): remote node -> [last seen (epoch s), delivered, refused], since start.
        self.remote_nodes: dict[str, list[float]] = {}
        self._limits = ConnectionLimits(config)
        self._conns: set[Connection] = set()
        self._next_conn_id = 1
        self._next_purge = clock() + PURGE_INTERVAL_S
        #: Connections open now.
        self.connections = 0

    # ------------------------------------------------------------------ connection life
    def accept(self, peer: PeerCredentials) -> Connection | bytes:
        """Run the admission policy on a new peer, before any byte is read from it.

        Returns a :class:`Connection` for an admitted peer, or the one error frame to write
        before closing a refused one: -32003 ``too_many_connections`` past
        ``max_connections_per_uid``, or -32002 with the policy's reason. Both outcomes are
        audited (``peer_admitted``, ``peer_refused``).
        """
        limit = self.config.max_connections_per_uid
        if self._limits.at_cap(peer.uid):
            self.audit("peer_refused", {"uid": peer.uid, "pid": peer.pid, "reason": "too_many_connections",
                                        "limit": limit})
            return p.encode_error(None, ErrorCode.RATE_LIMITED,
                                  f"Too many connections from uid {peer.uid} (limit {limit}).",
                                  {"reason": "too_many_connections", "retry_after_s": 1.0})
        adm = self.policy.admit(peer)
        fields: dict[str, Any] = {"uid": peer.uid, "gid": peer.gid, "pid": peer.pid, "exe": peer.exe,
                                  "rule": adm.rule}
        if peer.attest_error is not None:
            fields["attest_error"] = peer.attest_error
        if not adm.allowed:
            self.audit("peer_refused", {**fields, "reason": adm.reason})
            return p.encode_error(None, ErrorCode.FORBIDDEN,
                                  f"Peer uid {peer.uid} is not allowed to use this broker.",
                                  {"reason": adm.reason})
        conn = Connection(self._next_conn_id, peer, adm, self._limits.join(peer.uid, self.clock()))
        self._next_conn_id += 1
        self.connections += 1
        self._conns.add(conn)
        self.audit("peer_admitted", {**fields, "conn": conn.conn_id, "pidfd": peer.has_pidfd})
        return conn

    def close(self, conn: Connection) -> None:
        """Forget a connection that has closed. Its leases run out on their own."""
        self.bindings.unbind(conn)
        self.connections -= 1
        self._conns.discard(conn)
        if conn.bucket is not None:
            self._limits.leave(conn.peer.uid, conn.bucket)

    def frame_too_large(self, conn: Connection, size_bytes: int) -> bytes:
        """The -32004 frame for a frame of ``size_bytes`` over ``max_frame_bytes`` (audited as
        ``frame_too_large``); the shell then closes."""
        self.audit("frame_too_large",
                   {"conn": conn.conn_id, "uid": conn.peer.uid, "pid": conn.peer.pid, "bytes": size_bytes})
        limit = self.config.max_frame_bytes
        return p.encode_error(None, ErrorCode.FRAME_TOO_LARGE, f"Frame too large: the limit is {limit} bytes.",
                              {"reason": "frame_too_large", "max_frame_bytes": limit})

    def take_effects(self) -> list[Effect]:
        """Hand over (and clear) the effects produced since the last call."""
        return self.delivery.take_effects()

    # ------------------------------------------------------------------ frames
    def handle_frame(self, conn: Connection, frame: bytes) -> bytes | WaitForMail | None:
        """Process one NDJSON frame (without its ``\\n``) from ``conn``.

        Returns the response frame, a :class:`WaitForMail` for a long-poll that must wait, or
        None for a JSON-RPC notification (a request with no ``id``, JSON-RPC 2.0 section 4.1),
        which gets no response, not even an error. A JSON array is a batch (JSON-RPC 2.0
        section 6, :func:`.batch.handle_batch`): its response is one array frame, or None when
        every member is a notification. Each request takes one token of the UID's rate limit.
        """
        bucket = conn.bucket
        if bucket is not None:
            wait = bucket.take(self.clock())
            if wait:
                return self._rate_limited(conn, bucket, frame, wait)
            bucket.limited = False
        req = self._decode(conn, frame)
        if isinstance(req, bytes):
            return req
        if req is None:  # a batch: found only once the frame failed to decode as one request
            if bucket is not None:
                bucket.give_back()  # its members take the tokens
            return handle_batch(self, conn, frame)
        notify = req.id is UNSET
        rid: p.RequestId = None if req.id is UNSET else req.id
        if rid.__class__ is float:  # echo a fractional id as its exact text (1.50 stays 1.50)
            rid = p.exact_id(frame)
        out = self._dispatch(conn, req.method, req.params, rid)
        return None if notify else out

    def _decode(self, conn: Connection, frame: bytes) -> p.Request | bytes | None:
        """The request in ``frame``; None if it is a batch (a JSON array); or the error frame
        for one that is not a request: -32700 (not UTF-8 JSON, or nested too deeply) or -32600
        (valid JSON that is not a request object; JSON-RPC 2.0 section 5.1)."""
        try:
            # msgspec checks UTF-8 only inside the strings it decodes (and raises
            # UnicodeDecodeError there, not DecodeError), so check the whole frame first.
            if not frame.isascii():  # ASCII is valid UTF-8: skip the copy
                frame.decode()
            return p.REQUEST_DECODER.decode(frame)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            if is_batch(frame):
                return None
            # Valid JSON that is not a request is -32600; msgspec stops at the first wrong type,
            # so a truncated frame can fail as a ValidationError: check the whole frame.
            if isinstance(exc, msgspec.DecodeError) and is_json(frame):
                return self._bad(conn, p.salvage_id(frame), ErrorCode.INVALID_REQUEST, "invalid_request",
                                 f"Invalid request: {exc}.", None)
            return self._bad(conn, None, ErrorCode.PARSE_ERROR, "parse_error",
                             "Parse error: the frame is not valid UTF-8 JSON.", None)
        except RecursionError:  # valid JSON nested deeper than msgspec will recurse
            return self._bad(conn, None, ErrorCode.PARSE_ERROR, "nesting_too_deep",
                             "Parse error: the frame is nested too deeply.", None)

    def _dispatch(self, conn: Connection, method: str, params: Raw, rid: p.RequestId) -> bytes | WaitForMail:
        """Run ``method``: its result frame, a WaitForMail, or its error frame (-32601 for an
        unknown method; the RpcError's code; -32603 for a bug, logged with its traceback)."""
        spec = METHOD_TABLE.get(method)
        if spec is None:
            return self._bad(conn, rid, ErrorCode.METHOD_NOT_FOUND, "method_not_found", "Method not found.", method)
        try:
            result = self._call(spec, conn, params, rid)
        except RpcError as err:
            if err.code == ErrorCode.INVALID_PARAMS:
                self._audit_bad(conn, err.code, err.reason, method)
            return p.encode_error(rid, err.code, err.message, err.data)
        except Exception:
            log.exception("internal error in %s (conn %d)", method, conn.conn_id)
            return p.encode_error(rid, ErrorCode.INTERNAL_ERROR, "Internal error.", {"reason": "internal_error"})
        if isinstance(result, WaitForMail):
            return result
        return p.encode_result(rid, result)

    def _call(self, spec: MethodSpec, conn: Connection, params: Raw, rid: p.RequestId) -> Any:
        """Check what ``spec`` needs, decode its params, run its handler. Raises RpcError
        (-32001 ``peer_exe_changed`` from :func:`~.attest.recheck_exe` on a connection whose
        admission pins the executable; -32001/-32002 from the session check; -32602
        ``invalid_params``; the handler's)."""
        if conn.admission.pins_exe:  # issue 13: the executable is checked before every request
            recheck_exe(conn, self.sessions, self.audit)
        if not spec.public:
            self.sessions.require(conn, spec.scope)
        try:
            decoded = spec.decoder.decode(params)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise RpcError(ErrorCode.INVALID_PARAMS, "invalid_params", f"Invalid params: {exc}.") from None
        return spec.handler(self, conn, decoded, rid)

    def _rate_limited(self, conn: Connection, bucket: TokenBucket, frame: bytes, wait: float) -> bytes | None:
        """-32003 for a frame over the UID's token bucket (None for a notification); audited
        once per limited stretch."""
        if not bucket.limited:
            bucket.limited = True
            self.audit("rate_limited", {"conn": conn.conn_id, "uid": conn.peer.uid, "pid": conn.peer.pid,
                                        "rate_per_s": bucket.rate_per_s, "burst": bucket.burst})
        try:
            req = p.REQUEST_DECODER.decode(frame)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            if is_batch(frame):  # each member is answered (or dropped) as rate limited
                return handle_batch(self, conn, frame)
            rid: p.RequestId = p.salvage_id(frame)
        else:
            if req.id is UNSET:
                return None  # a notification: dropped, and never answered
            rid = p.exact_id(frame) if isinstance(req.id, float) else req.id
        return p.encode_error(rid, ErrorCode.RATE_LIMITED,
                              f"Rate limited: at most {bucket.rate_per_s:g} requests/s per user.",
                              {"reason": "rate_limited", "retry_after_s": round(max(wait, 0.001), 3)})

    def poll_receive(self, conn: Connection, wait: WaitForMail, *, final: bool) -> bytes | None:
        """Retry a waiting ``receive``: the response frame if mail is ready or ``final`` (then
        possibly with no messages), else None. The session is checked again (its error frame
        if it ended meanwhile)."""
        try:
            s = self.sessions.require(conn, SCOPE_RECEIVE)
            msgs = self.delivery.lease(s.instance_id, wait.max_count)
        except RpcError as err:
            return p.encode_error(wait.request_id, err.code, err.message, err.data)
        if msgs or final:
            return p.encode_result(wait.request_id, p.ReceiveResult(messages=msgs))
        return None

    def _bad(self, conn: Connection, rid: p.RequestId, code: ErrorCode, reason: str, message: str,
             method: str | None) -> bytes:
        self._audit_bad(conn, code, reason, method)
        return p.encode_error(rid, code, message, {"reason": reason})

    def _audit_bad(self, conn: Connection, code: int, reason: str, method: str | None) -> None:
        fields: dict[str, Any] = {"conn": conn.conn_id, "uid": conn.peer.uid, "pid": conn.peer.pid,
                                  "code": int(code), "reason": reason}
        if method is not None:
            fields["method"] = method[:64]
        self.audit("bad_request", fields)

    # ------------------------------------------------------------------ policy reload
    def replace_policy(self, policy: Policy, label: str = "") -> None:
        """Swap in a new admission policy (a config reload, ``label`` names it in the audit)
        and apply it to live connections.

        Every open connection is admitted again under ``policy``: its scopes become the new
        rule's at once (a request needs the scope in both its session and its connection's
        admission). A connection no longer admitted has its session revoked and is closed
        (a :class:`Drop` effect).
        """
        self.policy = policy
        dropped = 0
        for conn in list(self._conns):
            conn.admission = adm = policy.admit(conn.peer)
            if adm.allowed:
                continue
            dropped += 1
            if conn.session is not None and not conn.session.revoked:
                self.sessions.kill(conn.session, "peer no longer admitted")
            self.bindings.unbind(conn)
            self.delivery.emit(Drop(conn))
        self.audit("config_reloaded", {"config": label, "connections": len(self._conns), "dropped": dropped})

    # ------------------------------------------------------------------ time
    def tick(self) -> None:
        """Time-driven work: re-queue expired leases (and push or wake for them); every
        :data:`PURGE_INTERVAL_S`, purge expired state and unclaimed mail, and free idle names
        (``name_idle_release_s``)."""
        now = self.clock()
        self.delivery.release_expired(now)
        if now >= self._next_purge:
            self.store.purge(now)
            self.delivery.expire_unclaimed(now)
            self.names.release_idle(now)
            self._next_purge = now + PURGE_INTERVAL_S

    def next_deadline(self) -> float:
        """The epoch second at which :meth:`tick` next has work (a lease expiry or a purge)."""
        lease = self.store.next_lease_expiry()
        return self._next_purge if lease is None else min(lease, self._next_purge)

    # ------------------------------------------------------------------ introspection
    def online_instances(self) -> Iterable[str]:
        """Instance ids with at least one connection bound to a live session."""
        return self.bindings.names()

    def connections_by_uid(self) -> dict[int, int]:
        """Open connections per peer UID (``admin_stats``)."""
        return dict(Counter(c.peer.uid for c in self._conns))

    def live_sessions(self) -> int:
        """How many sessions have at least one connection bound now (one per online instance).

        Read-only and O(1); the shell reports it to the service manager (``STATUS=``).
        """
        return len(self.bindings)
