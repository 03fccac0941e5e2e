"""The broker's state machine: sessions, mailboxes, leases, forwards and the method rules.

Sans-I/O: :class:`Broker` takes already-read peer credentials and complete NDJSON frames, and
returns response frames plus *effects* (notifications to push to other connections, mailboxes to
wake long-pollers on). It never touches a socket, a file or a clock of its own: time comes from
the injected ``clock`` and randomness from the injected ``token_bytes``.

Rules come from ``docs/protocol.md`` (protocol v1) and the JSON-RPC 2.0 specification.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from msgspec import UNSET

from ..errors import ErrorCode, ResourceRefused, RpcError
from ..store import MemoryStore, Session, Store, StoredMessage
from . import protocol as p
from .config import BrokerConfig
from .policy import (
    SCOPE_ADMIN,
    SCOPE_BROADCAST,
    SCOPE_LIST,
    SCOPE_RECEIVE,
    SCOPE_RENAME,
    SCOPE_RESOURCES,
    SCOPE_SEND,
    Admission,
    PeerCredentials,
    Policy,
)
from .timefmt import IdGenerator, rfc3339

log = logging.getLogger("parrot_ipc.broker")
AuditSink = Callable[[str, dict[str, Any]], None]
#: Reads one resource by an already-validated name: its bytes, or None if there is no such
#: resource. Raises :class:`~parrot_ipc.errors.ResourceRefused` for a file it must not serve.
#: The OS layer provides it (:class:`parrot_ipc.resources.ResourceDir`); the core does no I/O.
ResourceReader = Callable[[str], bytes | None]

_PURGE_INTERVAL_S: Final = 60.0
_MAX_FORWARD_HOPS: Final = 8
_PUBLIC: Final = "public"
_SESSION: Final = "session"


def default_audit(event: str, fields: dict[str, Any]) -> None:
    """Write one JSON audit line to the ``parrot_ipc.audit`` logger (never tokens or content)."""
    logging.getLogger("parrot_ipc.audit").info(
        "%s", msgspec.json.encode({"event": event, **fields}).decode()
    )


def token_hash(token: str) -> bytes:
    """SHA-256 of a session token's text: the only form in which a token is kept."""
    return hashlib.sha256(token.encode()).digest()


class TokenBucket:
    """A token bucket (RFC 2697's idea, one rate): ``rate_per_s`` tokens a second, at most
    ``burst`` banked. One per peer UID, shared by all its connections."""

    __slots__ = ("burst", "limited", "rate_per_s", "stamp", "tokens", "users")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self.tokens, self.stamp = burst, now
        self.limited = False  # in a limited stretch (audit once per stretch)
        self.users = 0  # connections sharing it

    def take(self, now: float) -> float:
        """Spend one token: 0.0 if there was one, else the seconds until there will be."""
        elapsed = now - self.stamp
        tokens = self.tokens + (elapsed * self.rate_per_s if elapsed > 0 else 0.0)  # a clock step back adds none
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate_per_s


class Connection:
    """The core's view of one client connection: its peer, its admission and its session."""

    __slots__ = ("admission", "bucket", "conn_id", "peer", "push_inflight", "session", "subscribed")

    def __init__(self, conn_id: int, peer: PeerCredentials, admission: Admission,
                 bucket: TokenBucket | None = None) -> None:
        self.bucket = bucket
        self.conn_id = conn_id
        self.peer = peer
        self.admission = admission
        self.session: Session | None = None
        self.subscribed = False
        self.push_inflight: dict[str, None] = {}  # ids pushed and not acked (a dict: smaller than a set)

    @property
    def instance_id(self) -> str | None:
        """The instance this connection acts as, or None before get_token/authenticate."""
        s = self.session
        return None if s is None or s.revoked else s.instance_id

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} uid={self.peer.uid} pid={self.peer.pid} as={self.instance_id}>"


@dataclass(slots=True)
class Push:
    """Effect: write ``frame`` (a notification) to ``conn``, after the current response."""

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
    instance), then calls :meth:`Broker.poll_receive`.
    """

    request_id: p.RequestId
    max_count: int
    wait_s: float


@dataclass(frozen=True, slots=True)
class _Method:
    handler: Callable[[Broker, Connection, Any, p.RequestId], Any]
    decoder: msgspec.json.Decoder[Any]
    needs: str  # _PUBLIC, _SESSION, or a scope name


class Broker:
    """One broker's state and rules.

    Args:
        config: tunables (units in the field names).
        policy: decides at accept which peers are admitted, with which scopes.
        store: where sessions, mailboxes, forwards and idempotency keys live
            (default: a fresh :class:`MemoryStore`).
        clock: wall clock, seconds since the Unix epoch (injectable for tests).
        token_bytes: source of random bytes for tokens (default :func:`secrets.token_bytes`).
        audit: sink for security events ``(event, fields)``; fields never hold tokens,
            secrets or message content.
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
        audit: AuditSink = default_audit,
        shared_secret: bytes | None = None,
        id_floor: str | None = None,
        resources: ResourceReader | None = None,
    ) -> None:
        self.config = config or BrokerConfig()
        self.policy = policy
        self.store: Store = store if store is not None else MemoryStore()
        self._clock = clock
        self._token_bytes = token_bytes
        self._audit = audit
        #: The audit sink, for the shell's own events (timeouts, drops).
        self.audit = audit
        self._shared_secret = shared_secret
        self._resources = resources
        self._ids = IdGenerator(floor_id=id_floor)
        self._next_conn_id = 1
        self._bound: dict[str, set[Connection]] = {}
        self._pushed: dict[str, Connection] = {}
        self._effects: list[Effect] = []
        self._conns: set[Connection] = set()
        self._buckets: dict[int, TokenBucket] = {}
        self._secret_failures: dict[int, deque[float]] = {}
        self._next_purge = clock() + _PURGE_INTERVAL_S
        self.connections = 0

    # ------------------------------------------------------------------ connection life
    def accept(self, peer: PeerCredentials) -> Connection | bytes:
        """Run the admission policy on a new peer, before any byte is read from it.

        Returns a :class:`Connection` for an admitted peer, or the one -32002 error frame to
        write before closing a refused one. Both outcomes are audited.
        """
        bucket = self._buckets.get(peer.uid)
        if bucket is not None and bucket.users >= self.config.max_connections_per_uid:
            self._audit("peer_refused", {"uid": peer.uid, "pid": peer.pid, "reason": "too_many_connections",
                                         "limit": self.config.max_connections_per_uid})
            return p.encode_error(
                None, ErrorCode.RATE_LIMITED,
                f"Too many connections from uid {peer.uid} (limit {self.config.max_connections_per_uid}).",
                {"reason": "too_many_connections", "retry_after_s": 1.0},
            )
        adm = self.policy.admit(peer)
        fields: dict[str, Any] = {"uid": peer.uid, "gid": peer.gid, "pid": peer.pid, "exe": peer.exe,
                                  "rule": adm.rule}
        if peer.attest_error is not None:
            fields["attest_error"] = peer.attest_error
        if not adm.allowed:
            self._audit("peer_refused", {**fields, "reason": adm.reason})
            return p.encode_error(
                None,
                ErrorCode.FORBIDDEN,
                f"Peer uid {peer.uid} is not allowed to use this broker.",
                {"reason": adm.reason},
            )
        if bucket is None:
            bucket = self._buckets[peer.uid] = TokenBucket(self.config.rate_per_s, self.config.burst, self._clock())
        bucket.users += 1
        conn = Connection(self._next_conn_id, peer, adm, bucket)
        self._next_conn_id += 1
        self.connections += 1
        self._conns.add(conn)
        self._audit("peer_admitted", {**fields, "conn": conn.conn_id, "pidfd": peer.has_pidfd})
        return conn

    def close(self, conn: Connection) -> None:
        """Forget a connection that has closed. Its leases run out on their own."""
        self._unbind(conn)
        self.connections -= 1
        self._conns.discard(conn)
        bucket = conn.bucket
        if bucket is not None:
            bucket.users -= 1
            if bucket.users <= 0 and self._buckets.get(conn.peer.uid) is bucket:
                del self._buckets[conn.peer.uid]

    def frame_too_large(self, conn: Connection, size_bytes: int) -> bytes:
        """The -32004 frame for a frame over ``max_frame_bytes``; the shell then closes."""
        self._audit(
            "frame_too_large",
            {"conn": conn.conn_id, "uid": conn.peer.uid, "pid": conn.peer.pid, "bytes": size_bytes},
        )
        limit = self.config.max_frame_bytes
        return p.encode_error(
            None,
            ErrorCode.FRAME_TOO_LARGE,
            f"Frame too large: the limit is {limit} bytes.",
            {"reason": "frame_too_large", "max_frame_bytes": limit},
        )

    def take_effects(self) -> list[Effect]:
        """Hand over (and clear) the effects produced since the last call."""
        eff, self._effects = self._effects, []
        return eff

    # ------------------------------------------------------------------ frames
    def handle_frame(self, conn: Connection, frame: bytes) -> bytes | WaitForMail | None:
        """Process one NDJSON frame (without its ``\\n``) from ``conn``.

        Returns the response frame, a :class:`WaitForMail` for a long-poll that must wait, or
        None for a JSON-RPC notification (a request with no ``id``), which gets no response.
        """
        bucket = conn.bucket
        if bucket is not None:
            wait = bucket.take(self._clock())
            if wait:
                return self._rate_limited(conn, bucket, frame, wait)
            bucket.limited = False
        try:
            # msgspec checks UTF-8 only inside the strings it decodes (and raises
            # UnicodeDecodeError there, not DecodeError), so check the whole frame first.
            if not frame.isascii():  # ASCII is valid UTF-8: skip the copy
                frame.decode()
            req = p.REQUEST_DECODER.decode(frame)
        except msgspec.ValidationError as exc:
            return self._bad(conn, p.salvage_id(frame), ErrorCode.INVALID_REQUEST, "invalid_request",
                             f"Invalid request: {exc}.", None)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return self._bad(conn, None, ErrorCode.PARSE_ERROR, "parse_error",
                             "Parse error: the frame is not valid UTF-8 JSON.", None)
        except RecursionError:  # valid JSON nested deeper than msgspec will recurse
            return self._bad(conn, None, ErrorCode.PARSE_ERROR, "nesting_too_deep",
                             "Parse error: the frame is nested too deeply.", None)
        rid = None if req.id is UNSET else req.id
        notify = req.id is UNSET
        method = _METHODS.get(req.method)
        if method is None:
            out = self._bad(conn, rid, ErrorCode.METHOD_NOT_FOUND, "method_not_found",
                            "Method not found.", req.method)
            return None if notify else out
        try:
            if method.needs is not _PUBLIC:
                self._require(conn, method.needs)
            try:
                params = method.decoder.decode(req.params)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise RpcError(ErrorCode.INVALID_PARAMS, "invalid_params", f"Invalid params: {exc}.") from None
            result = method.handler(self, conn, params, rid)
        except RpcError as err:
            if err.code == ErrorCode.INVALID_PARAMS:
                self._audit_bad(conn, err.code, err.reason, req.method)
            return None if notify else p.encode_error(rid, err.code, err.message, err.data)
        except Exception:
            log.exception("internal error in %s (conn %d)", req.method, conn.conn_id)
            return None if notify else p.encode_error(
                rid, ErrorCode.INTERNAL_ERROR, "Internal error.", {"reason": "internal_error"}
            )
        if notify:
            return None
        if isinstance(result, WaitForMail):
            return result
        return p.encode_result(rid, result)

    def _rate_limited(self, conn: Connection, bucket: TokenBucket, frame: bytes, wait: float) -> bytes | None:
        """-32003 for a frame over the UID's token bucket; audited once per limited stretch."""
        if not bucket.limited:
            bucket.limited = True
            self._audit("rate_limited", {"conn": conn.conn_id, "uid": conn.peer.uid, "pid": conn.peer.pid,
                                         "rate_per_s": bucket.rate_per_s, "burst": bucket.burst})
        try:
            req = p.REQUEST_DECODER.decode(frame)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            rid: p.RequestId = p.salvage_id(frame)
        else:
            if req.id is UNSET:
                return None  # a notification: dropped, and never answered
            rid = req.id
        return p.encode_error(rid, ErrorCode.RATE_LIMITED,
                              f"Rate limited: at most {bucket.rate_per_s:g} requests/s per user.",
                              {"reason": "rate_limited", "retry_after_s": round(max(wait, 0.001), 3)})

    def poll_receive(self, conn: Connection, wait: WaitForMail, *, final: bool) -> bytes | None:
        """Retry a waiting ``receive``: the response frame if mail is ready or ``final``, else None."""
        try:
            s = self._require(conn, SCOPE_RECEIVE)
            msgs = self.store.lease(s.instance_id, wait.max_count, self._clock() + self.config.lease_s)
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
        self._audit("bad_request", fields)

    # ------------------------------------------------------------------ sessions
    def _require(self, conn: Connection, needs: str) -> Session:
        s = conn.session
        if s is None:
            raise RpcError(ErrorCode.UNAUTHENTICATED, "no_session",
                           "Not authenticated: call get_token or authenticate first.")
        now = self._clock()
        if s.revoked:
            raise RpcError(ErrorCode.UNAUTHENTICATED, "token_revoked",
                           "This session was revoked or replaced; get a new token.")
        if now >= s.expires_at:
            self._unbind(conn)
            raise RpcError(ErrorCode.UNAUTHENTICATED, "token_expired", "The session token has expired.")
        if needs is not _SESSION and (needs not in s.scopes or needs not in conn.admission.scopes):
            self._audit("scope_denied", {"conn": conn.conn_id, "uid": conn.peer.uid,
                                         "instance": s.instance_id, "scope": needs})
            raise RpcError(ErrorCode.FORBIDDEN, "scope_missing",
                           f"This session lacks the scope {needs!r}.", scope=needs)
        self.store.touch_instance(s.instance_id, now)
        return s

    def _bind(self, conn: Connection, session: Session) -> None:
        self._unbind(conn)
        conn.session = session
        self._bound.setdefault(session.instance_id, set()).add(conn)

    def _unbind(self, conn: Connection) -> None:
        s = conn.session
        if s is not None:
            bound = self._bound.get(s.instance_id)
            if bound is not None:
                bound.discard(conn)
                if not bound:
                    del self._bound[s.instance_id]
        conn.subscribed = False
        for mid in conn.push_inflight:
            self._pushed.pop(mid, None)
        conn.push_inflight.clear()

    def _kill_session(self, s: Session, why: str) -> None:
        s.revoked = True
        self.store.delete_session(s)
        for conn in list(self._bound.get(s.instance_id, ())):
            if conn.session is s:
                self._unbind(conn)
        self._audit("session_ended", {"instance": s.instance_id, "uid": s.uid, "why": why})

    def _issue(self, conn: Connection, instance_id: str, now: float) -> tuple[str, Session]:
        token = base64.urlsafe_b64encode(self._token_bytes(32)).rstrip(b"=").decode()
        peer = conn.peer
        s = Session(token_hash(token), instance_id, peer.uid, peer.gid, peer.pid,
                    conn.admission.scopes, now, now + self.config.token_ttl_s)
        if conn.admission.bind == "process":
            s.bound_pid, s.bound_start_time = peer.pid, peer.start_time
        self.store.put_session(s)
        self.store.touch_instance(instance_id, now)
        self._bind(conn, s)
        return token, s

    # ------------------------------------------------------------------ methods
    def _m_ping(self, conn: Connection, _: p.NoParams, rid: p.RequestId) -> str:
        return "pong"

    def _m_get_token(self, conn: Connection, prm: p.GetTokenParams, rid: p.RequestId) -> p.TokenResult:
        peer, name, now = conn.peer, prm.instance_id, self._clock()
        fields = {"conn": conn.conn_id, "uid": peer.uid, "pid": peer.pid, "instance": name}
        if self._shared_secret is not None:
            self._check_secret_proof(conn, name, prm.shared_secret_proof, now, fields)
        held = self.store.session_of(name)
        if held is not None:
            if held.live(now) and held.uid != peer.uid:
                self._audit("token_refused", {**fields, "reason": "instance_held_by_other_uid"})
                raise RpcError(ErrorCode.CONFLICT, "instance_held_by_other_uid",
                               f"The instance {name!r} is held by another user.")
            self._kill_session(held, "replaced")
        self.store.delete_forward(name)
        token, s = self._issue(conn, name, now)
        self._audit("token_issued", {**fields, "scopes": sorted(s.scopes), "expires_at": rfc3339(s.expires_at)})
        self._deliver(name)
        return p.TokenResult(token=token, instance_id=name, expires_at=rfc3339(s.expires_at),
                             scopes=sorted(s.scopes))

    def _check_secret_proof(self, conn: Connection, name: str, proof: str | None, now: float,
                            fields: dict[str, Any]) -> None:
        """claude-ipc compatibility: proof = hex HMAC-SHA256(secret, instance_id), constant-time.

        Failures are counted per UID; past ``max_secret_failures`` in ``secret_failure_window_s``
        the UID gets -32003 until the window slides.
        """
        assert self._shared_secret is not None
        cfg, uid = self.config, conn.peer.uid
        failures = self._secret_failures.get(uid)
        if failures is not None:
            while failures and failures[0] <= now - cfg.secret_failure_window_s:
                failures.popleft()
            if len(failures) >= cfg.max_secret_failures:
                wait = max(1, math.ceil(failures[0] + cfg.secret_failure_window_s - now))
                self._audit("rate_limited", {**fields, "method": "get_token", "retry_after_s": wait})
                raise RpcError(ErrorCode.RATE_LIMITED, "secret_rate_limited",
                               f"Too many wrong shared-secret proofs; retry in {wait} s.", retry_after_s=wait)
        want = hmac.new(self._shared_secret, name.encode(), hashlib.sha256).hexdigest()
        if proof is None or not hmac.compare_digest(want.encode(), proof.encode()):
            self._secret_failures.setdefault(uid, deque()).append(now)
            self._audit("token_refused", {**fields, "reason": "bad_shared_secret_proof"})
            raise RpcError(ErrorCode.FORBIDDEN, "bad_shared_secret_proof",
                           "The shared-secret proof is missing or wrong.")

    def _m_authenticate(self, conn: Connection, prm: p.AuthenticateParams, rid: p.RequestId) -> p.AuthResult:
        h = token_hash(prm.token)
        s = self.store.get_session(h)
        fields = {"conn": conn.conn_id, "uid": conn.peer.uid, "pid": conn.peer.pid}
        now = self._clock()
        if s is None or not hmac.compare_digest(s.token_hash, h) or s.revoked:
            self._audit("auth_failed", {**fields, "reason": "token_invalid"})
            raise RpcError(ErrorCode.UNAUTHENTICATED, "token_invalid", "Unknown or revoked token.")
        if s.uid != conn.peer.uid:
            self._audit("token_uid_mismatch", {**fields, "instance": s.instance_id, "token_uid": s.uid})
            raise RpcError(ErrorCode.UNAUTHENTICATED, "token_uid_mismatch",
                           "This token was issued to another user.")
        if s.bound_pid is not None and (conn.peer.pid, conn.peer.start_time) != (s.bound_pid, s.bound_start_time):
            self._audit("token_process_mismatch", {**fields, "instance": s.instance_id, "token_pid": s.bound_pid})
            raise RpcError(ErrorCode.UNAUTHENTICATED, "token_process_mismatch",
                           "This token is bound to another process.")
        if now >= s.expires_at:
            self._audit("auth_failed", {**fields, "reason": "token_expired", "instance": s.instance_id})
            raise RpcError(ErrorCode.UNAUTHENTICATED, "token_expired", "The session token has expired.")
        self._bind(conn, s)
        self.store.touch_instance(s.instance_id, now)
        self._audit("authenticated", {**fields, "instance": s.instance_id})
        return p.AuthResult(instance_id=s.instance_id, expires_at=rfc3339(s.expires_at),
                            scopes=sorted(s.scopes & conn.admission.scopes))

    def _m_whoami(self, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.WhoamiResult:
        s = conn.session
        assert s is not None
        peer = conn.peer
        return p.WhoamiResult(instance_id=s.instance_id, uid=peer.uid, gid=peer.gid, pid=peer.pid,
                              scopes=sorted(s.scopes & conn.admission.scopes), expires_at=rfc3339(s.expires_at))

    def _resolve(self, name: str, now: float) -> tuple[str, bool]:
        """Follow rename forwards from ``name``, stopping at a live holder. Returns (target, forwarded)."""
        forwarded = False
        for _ in range(_MAX_FORWARD_HOPS):
            holder = self.store.session_of(name)
            if holder is not None and holder.live(now):
                break
            nxt = self.store.get_forward(name, now)
            if nxt is None:
                break
            name, forwarded = nxt, True
        return name, forwarded

    def _enqueue(self, sender: str, target: str, content: str, data: dict[str, Any] | None,
                 now: float) -> p.Message:
        size = (len(content) if content.isascii() else len(content.encode())) + (
            len(msgspec.json.encode(data)) if data else 0)
        count, used = self.store.mailbox_usage(target)
        cfg = self.config
        if count >= cfg.max_mailbox_messages or used + size > cfg.max_mailbox_bytes:
            raise RpcError(ErrorCode.MAILBOX_FULL, "mailbox_full",
                           f"The mailbox of {target!r} is full.", to=target)
        if count == 0 and not self._held(target, now) and self._unclaimed(now) >= cfg.max_unclaimed_mailboxes:
            raise RpcError(ErrorCode.MAILBOX_FULL, "too_many_unclaimed_mailboxes",
                           f"Too many mailboxes for names nobody holds (limit {cfg.max_unclaimed_mailboxes}).",
                           to=target)
        msg = p.Message(id=self._ids.next(now), from_=sender, to=target, content=content,
                        data=UNSET if data is None else data, sent_at=rfc3339(now))
        self.store.enqueue(StoredMessage(msg, target, size))
        return msg

    def _held(self, name: str, now: float) -> bool:
        holder = self.store.session_of(name)
        return holder is not None and holder.live(now)

    def _unclaimed(self, now: float) -> int:
        """How many mailboxes belong to names nobody holds. O(mailboxes); only on a new unknown name."""
        return sum(1 for name in self.store.mailbox_names() if not self._held(name, now))

    def _expire_unclaimed(self, now: float) -> None:
        """Delete mail older than ``unclaimed_mail_ttl_s`` to names nobody holds."""
        cutoff_ms = max(0, int((now - self.config.unclaimed_mail_ttl_s) * 1000))
        before = f"{cutoff_ms:012x}000000"
        for name in self.store.mailbox_names():
            if not self._held(name, now):
                gone = self.store.expire_mail(name, before)
                for mid in gone:
                    holder = self._pushed.pop(mid, None)
                    if holder is not None:
                        holder.push_inflight.pop(mid, None)
                if gone:
                    self._audit("mail_expired", {"instance": name, "count": len(gone)})

    def _m_send(self, conn: Connection, prm: p.SendParams, rid: p.RequestId) -> p.SendResult:
        s = conn.session
        assert s is not None
        sender, now = s.instance_id, self._clock()
        key = prm.idempotency_key
        if key is not None:
            hit = self.store.get_idempotent(sender, key, now)
            if hit is not None:
                return hit
        target, forwarded = self._resolve(prm.to, now)
        adm = conn.admission
        if not (adm.may_send(prm.to) and adm.may_send(target)):
            self._audit("send_denied", {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": sender,
                                        "to": prm.to, "rule": adm.rule})
            raise RpcError(ErrorCode.FORBIDDEN, "recipient_not_allowed",
                           f"This peer may not send to {prm.to!r}.", to=prm.to)
        msg = self._enqueue(sender, target, prm.content, prm.data, now)
        result = p.SendResult(id=msg.id, to=target, status="forwarded" if forwarded else "queued")
        if key is not None:
            self.store.put_idempotent(sender, key, result, now + self.config.idempotency_ttl_s)
        log.debug("send %s -> %s id=%s", sender, target, msg.id)
        self._deliver(target)
        return result

    def _m_broadcast(self, conn: Connection, prm: p.BroadcastParams, rid: p.RequestId) -> p.BroadcastResult:
        s = conn.session
        assert s is not None
        sender, now = s.instance_id, self._clock()
        recipients = []
        for name in sorted(self.store.instance_ids()):
            holder = self.store.session_of(name)
            if name == sender or holder is None or not holder.live(now) or not conn.admission.may_send(name):
                continue
            try:
                self._enqueue(sender, name, prm.content, prm.data, now)
            except RpcError:
                continue  # a full mailbox is skipped, and not listed as a recipient
            recipients.append(name)
            self._deliver(name)
        return p.BroadcastResult(id=self._ids.next(now), recipients=recipients)

    def _m_receive(self, conn: Connection, prm: p.ReceiveParams, rid: p.RequestId) -> p.ReceiveResult | WaitForMail:
        s = conn.session
        assert s is not None
        msgs = self.store.lease(s.instance_id, prm.max, self._clock() + self.config.lease_s)
        if msgs or prm.wait_s <= 0:
            return p.ReceiveResult(messages=msgs)
        return WaitForMail(rid, prm.max, prm.wait_s)

    def _m_ack(self, conn: Connection, prm: p.AckParams, rid: p.RequestId) -> p.AckResult:
        s = conn.session
        assert s is not None
        done = self.store.ack(s.instance_id, prm.ids)
        for mid in done:
            holder = self._pushed.pop(mid, None)
            if holder is not None:
                holder.push_inflight.pop(mid, None)
        self._deliver(s.instance_id, wake=False)
        return p.AckResult(acked=len(done))

    def _m_list_instances(self, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.ListInstancesResult:
        now, store = self._clock(), self.store
        out = []
        for name in sorted(store.instance_ids()):
            holder = store.session_of(name)
            live = holder is not None and holder.live(now)
            out.append(p.InstanceInfo(
                instance_id=name,
                online=live and any(c.session is holder for c in self._bound.get(name, ())),
                last_seen=rfc3339(store.last_seen(name) or now),
                queued=store.mailbox_usage(name)[0],
            ))
        return p.ListInstancesResult(instances=out)

    def _m_rename(self, conn: Connection, prm: p.RenameParams, rid: p.RequestId) -> p.RenameResult:
        s = conn.session
        assert s is not None
        old, new, now, cfg = s.instance_id, prm.new_id, self._clock(), self.config
        if new == old:
            raise RpcError(ErrorCode.INVALID_PARAMS, "same_instance_id", "new_id is the current instance id.")
        if s.last_rename_at is not None and now - s.last_rename_at < cfg.rename_interval_s:
            wait = math.ceil(cfg.rename_interval_s - (now - s.last_rename_at))
            self._audit("rate_limited", {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": old,
                                         "method": "rename", "retry_after_s": wait})
            raise RpcError(ErrorCode.RATE_LIMITED, "rename_rate_limited",
                           f"One rename per {cfg.rename_interval_s:g} s; retry in {wait} s.", retry_after_s=wait)
        holder = self.store.session_of(new)
        if holder is not None:
            if holder.live(now):
                raise RpcError(ErrorCode.CONFLICT, "instance_taken", f"The instance {new!r} is taken.")
            self.store.delete_session(holder)
        self.store.delete_forward(new)
        s.instance_id, s.last_rename_at = new, now
        self.store.update_session(s, previous_instance_id=old)
        self.store.rename_instance(old, new, now)
        self.store.move_mailbox(old, new)
        self.store.put_forward(old, new, now + cfg.rename_forward_s)
        conns = self._bound.pop(old, set())
        if conns:
            self._bound.setdefault(new, set()).update(conns)
        self._audit("renamed", {"conn": conn.conn_id, "uid": conn.peer.uid, "from": old, "to": new})
        self._effects.append(Wake(old))
        self._deliver(new)
        return p.RenameResult(instance_id=new, previous_id=old)

    def _m_subscribe(self, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.SubscribeResult:
        s = conn.session
        assert s is not None
        conn.subscribed = True
        self._deliver(s.instance_id, wake=False)
        return p.SubscribeResult(subscribed=True)

    def _m_revoke(self, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.RevokeResult:
        s = conn.session
        assert s is not None
        self._kill_session(s, "revoked")
        return p.RevokeResult(revoked=True)

    def _m_list_sessions(self, conn: Connection, _: p.NoParams, rid: p.RequestId) -> p.ListSessionsResult:
        now = self._clock()
        out = [
            p.SessionInfo(instance_id=s.instance_id, uid=s.uid, pid=s.pid, scopes=sorted(s.scopes),
                          expires_at=rfc3339(s.expires_at),
                          online=any(c.session is s for c in self._bound.get(s.instance_id, ())),
                          bind="uid" if s.bound_pid is None else "process")
            for s in self.store.sessions() if s.live(now)
        ]
        out.sort(key=lambda i: i.instance_id)
        return p.ListSessionsResult(sessions=out)

    def _m_revoke_session(self, conn: Connection, prm: p.RevokeSessionParams, rid: p.RequestId) -> p.RevokeResult:
        s = self.store.session_of(prm.instance_id)
        if s is None or not s.live(self._clock()):
            raise RpcError(ErrorCode.NOT_FOUND, "no_such_session",
                           f"No live session holds {prm.instance_id!r}.")
        self._kill_session(s, f"revoked by admin uid {conn.peer.uid}")
        return p.RevokeResult(revoked=True)

    def _m_get_resource(self, conn: Connection, prm: p.GetResourceParams, rid: p.RequestId) -> p.ResourceResult:
        """Serve one resource file's text. Errors: -32602 ``bad_resource_name``; -32005
        ``resource_not_found`` (no such file, or no reader); -32005 ``resource_refused`` (the
        file is unsafe or not UTF-8: the reason is logged and audited, not sent)."""
        s = conn.session
        assert s is not None
        name = prm.name
        fields = {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": s.instance_id, "name": name}
        if not p.valid_resource_name(name):
            raise RpcError(ErrorCode.INVALID_PARAMS, "bad_resource_name",
                           "A resource name is 1-64 of A-Z a-z 0-9 _ . -, starts alphanumeric, and has no '..'.")
        try:
            raw = None if self._resources is None else self._resources(name)
            content = None if raw is None else raw.decode("utf-8")
        except (ResourceRefused, UnicodeDecodeError) as exc:
            why = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            log.warning("refusing to serve resource %r: %s", name, why)
            self._audit("resource_refused", {**fields, "why": why})
            raise RpcError(ErrorCode.NOT_FOUND, "resource_refused",
                           f"The resource {name!r} cannot be served; the broker's log says why.") from None
        if raw is None or content is None:
            self._audit("resource_not_found", fields)
            raise RpcError(ErrorCode.NOT_FOUND, "resource_not_found", f"No resource named {name!r}.")
        digest = hashlib.sha256(raw).hexdigest()
        self._audit("resource_served", {**fields, "sha256": digest})
        return p.ResourceResult(name=name, content=content, sha256=digest)

    # ------------------------------------------------------------------ policy reload
    def replace_policy(self, policy: Policy, label: str = "") -> None:
        """Swap in a new admission policy (a config reload) and apply it to live connections.

        Every open connection is admitted again under ``policy``: its scopes become the new
        rule's at once (a request needs the scope in both its session and its connection's
        admission). A connection no longer admitted has its session revoked and is closed
        (a :class:`Drop` effect).
        """
        self.policy = policy
        dropped = 0
        for conn in list(self._conns):
            adm = policy.admit(conn.peer)
            if adm.allowed:
                conn.admission = adm
                continue
            dropped += 1
            conn.admission = adm
            if conn.session is not None and not conn.session.revoked:
                self._kill_session(conn.session, "peer no longer admitted")
            self._unbind(conn)
            self._effects.append(Drop(conn))
        self._audit("config_reloaded", {"config": label, "connections": len(self._conns),
                                        "dropped": dropped})

    # ------------------------------------------------------------------ delivery
    def _deliver(self, name: str, *, wake: bool = True) -> None:
        """Push ready mail for ``name`` to its subscribers (within their window), then wake pollers."""
        conns = self._bound.get(name)
        if conns:
            window, until, now = self.config.push_window, 0.0, self._clock()
            for c in conns:
                room, s = window - len(c.push_inflight), c.session
                # A connection of an expired, purged or replaced session can still sit in
                # ``_bound`` under this name (and may be another UID's): never push to it.
                if not c.subscribed or room <= 0 or s is None or not s.live(now):
                    continue
                until = until or now + self.config.lease_s
                msgs = self.store.lease(name, room, until)
                if not msgs:
                    break
                for m in msgs:
                    c.push_inflight[m.id] = None
                    self._pushed[m.id] = c
                    self._effects.append(Push(c, p.encode_notification("message", m)))
        if wake:
            self._effects.append(Wake(name))

    def tick(self) -> None:
        """Time-driven work: re-queue expired leases (and push or wake for them), purge old state."""
        now = self._clock()
        names: set[str] = set()
        for item in self.store.release_expired(now):
            holder = self._pushed.pop(item.message.id, None)
            if holder is not None:
                holder.push_inflight.pop(item.message.id, None)
            names.add(item.mailbox)
        for name in names:
            self._deliver(name)
        if now >= self._next_purge:
            self.store.purge(now)
            self._expire_unclaimed(now)
            self._next_purge = now + _PURGE_INTERVAL_S

    def next_deadline(self) -> float:
        """The epoch second at which :meth:`tick` next has work (a lease expiry or a purge)."""
        lease = self.store.next_lease_expiry()
        return self._next_purge if lease is None else min(lease, self._next_purge)

    # ------------------------------------------------------------------ introspection
    def online_instances(self) -> Iterable[str]:
        """Instance ids with at least one connection bound to a live session."""
        return list(self._bound)

    def live_sessions(self) -> int:
        """How many sessions have at least one connection bound now (one per online instance).

        Read-only and O(1); the shell reports it to the service manager (``STATUS=``).
        """
        return len(self._bound)


def _method(handler: Callable[..., Any], params: type, needs: str) -> _Method:
    return _Method(handler, msgspec.json.Decoder(params), needs)


_METHODS: Final[dict[str, _Method]] = {
    "ping": _method(Broker._m_ping, p.NoParams, _PUBLIC),
    "get_token": _method(Broker._m_get_token, p.GetTokenParams, _PUBLIC),
    "authenticate": _method(Broker._m_authenticate, p.AuthenticateParams, _PUBLIC),
    "whoami": _method(Broker._m_whoami, p.NoParams, _SESSION),
    "send": _method(Broker._m_send, p.SendParams, SCOPE_SEND),
    "broadcast": _method(Broker._m_broadcast, p.BroadcastParams, SCOPE_BROADCAST),
    "receive": _method(Broker._m_receive, p.ReceiveParams, SCOPE_RECEIVE),
    "ack": _method(Broker._m_ack, p.AckParams, _SESSION),
    "list_instances": _method(Broker._m_list_instances, p.NoParams, SCOPE_LIST),
    "rename": _method(Broker._m_rename, p.RenameParams, SCOPE_RENAME),
    "subscribe": _method(Broker._m_subscribe, p.NoParams, SCOPE_RECEIVE),
    "revoke": _method(Broker._m_revoke, p.NoParams, _SESSION),
    "get_resource": _method(Broker._m_get_resource, p.GetResourceParams, SCOPE_RESOURCES),
    "list_sessions": _method(Broker._m_list_sessions, p.NoParams, SCOPE_ADMIN),
    "revoke_session": _method(Broker._m_revoke_session, p.RevokeSessionParams, SCOPE_ADMIN),
}

#: The methods of protocol v1 this broker serves.
METHODS: Final = tuple(_METHODS)
