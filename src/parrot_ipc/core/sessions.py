"""Sessions: issue and check tokens, bind connections to instances, require scopes, rename,
and end sessions.

Rules from ``docs/protocol.md`` ("Semantics"): a token is 32 random bytes, URL-safe base64, and
only its SHA-256 is stored. ``get_token`` takes over the instance (any earlier token dies) unless
a live session of another UID holds it (-32006). A token works only from the UID that got it
(and, with ``bind = "process"``, only from that process). A request needs its scope both in
the session and in the connection's current admission.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Callable
from typing import Any, Final, NoReturn

from ..errors import ErrorCode, RpcError
from ..store import Session, Store
from .config import BrokerConfig
from .connection import Bindings, Connection
from .effects import AuditSink
from .limits import SecretFailures
from .timefmt import rfc3339

#: Random bytes in a token (``docs/protocol.md``: 32 bytes, URL-safe base64 without padding).
TOKEN_BYTES: Final = 32


def token_hash(token: str) -> bytes:
    """SHA-256 of a session token's text (32 bytes): the only form in which a token is kept."""
    return hashlib.sha256(token.encode()).digest()


def secret_proof(secret: bytes, instance_id: str) -> str:
    """The claude-ipc shared-secret proof: hex HMAC-SHA256(secret, instance_id) (RFC 2104)."""
    return hmac.new(secret, instance_id.encode(), hashlib.sha256).hexdigest()


def _fields(conn: Connection, **more: Any) -> dict[str, Any]:
    return {"conn": conn.conn_id, "uid": conn.peer.uid, "pid": conn.peer.pid, **more}


class Sessions:
    """Session rules over the store and the connection bindings.

    Args:
        store: where sessions and instances live.
        config: ``token_ttl_s``, ``rename_interval_s``, ``rename_forward_s`` and the
            shared-secret throttle (``max_secret_failures``, ``secret_failure_window_s``).
        clock: wall clock, seconds since the Unix epoch.
        token_bytes: source of random bytes (``secrets.token_bytes`` in production).
        bindings: the one owner of ``Connection.session`` and the instance index.
        audit: the audit sink (never given tokens or secrets).
        shared_secret: when set, ``get_token`` needs its proof (see :func:`secret_proof`).
    """

    def __init__(self, *, store: Store, config: BrokerConfig, clock: Callable[[], float],
                 token_bytes: Callable[[int], bytes], bindings: Bindings, audit: AuditSink,
                 shared_secret: bytes | None) -> None:
        self._store, self._config, self._clock = store, config, clock
        self._token_bytes, self._bindings, self._audit = token_bytes, bindings, audit
        self._shared_secret = shared_secret
        self._secret_failures = SecretFailures(config)

    # ------------------------------------------------------------------ checks
    def require(self, conn: Connection, scope: str | None) -> Session:
        """The live session of ``conn``, which must grant ``scope`` (None: any session).

        Touches the instance's ``last_seen``. An expired session is unbound.

        Raises:
            RpcError: -32001 ``no_session``, ``token_revoked`` or ``token_expired``; -32002
                ``scope_missing`` (audited as ``scope_denied``) when the session or the
                connection's admission lacks ``scope``.
        """
        s = conn.session
        if s is None:
            raise RpcError(ErrorCode.UNAUTHENTICATED, "no_session",
                           "Not authenticated: call get_token or authenticate first.")
        now = self._clock()
        if s.revoked:
            raise RpcError(ErrorCode.UNAUTHENTICATED, "token_revoked",
                           "This session was revoked or replaced; get a new token.", why=s.ended or "revoked")
        if now >= s.expires_at:
            self._bindings.unbind(conn)
            raise RpcError(ErrorCode.UNAUTHENTICATED, "token_expired", "The session token has expired.")
        if scope is not None and (scope not in s.scopes or scope not in conn.admission.scopes):
            self._audit("scope_denied", {"conn": conn.conn_id, "uid": conn.peer.uid,
                                         "instance": s.instance_id, "scope": scope})
            raise RpcError(ErrorCode.FORBIDDEN, "scope_missing",
                           f"This session lacks the scope {scope!r}.", scope=scope)
        self._store.touch_instance(s.instance_id, now)
        return s

    def check_secret_proof(self, conn: Connection, name: str, proof: str | None) -> None:
        """claude-ipc compatibility: with a shared secret configured, ``proof`` must be
        :func:`secret_proof` of the requested ``name`` (compared in constant time). Without
        one, nothing is checked. Called before anything else about the name is looked at, so
        a peer without the secret learns nothing (not even who owns the name).

        Raises:
            RpcError: -32003 ``secret_rate_limited`` past ``max_secret_failures`` wrong proofs
                from the UID in ``secret_failure_window_s``; -32002 ``bad_shared_secret_proof``.
        """
        if self._shared_secret is None:
            return
        now = self._clock()
        uid, fields = conn.peer.uid, _fields(conn, instance=name)
        wait = self._secret_failures.retry_after(uid, now)
        if wait is not None:
            self._audit("rate_limited", {**fields, "method": "get_token", "retry_after_s": wait})
            raise RpcError(ErrorCode.RATE_LIMITED, "secret_rate_limited",
                           f"Too many wrong shared-secret proofs; retry in {wait} s.", retry_after_s=wait)
        want = secret_proof(self._shared_secret, name)
        if proof is None or not hmac.compare_digest(want.encode(), proof.encode()):
            self._secret_failures.record(uid, now)
            self._audit("token_refused", {**fields, "reason": "bad_shared_secret_proof"})
            raise RpcError(ErrorCode.FORBIDDEN, "bad_shared_secret_proof",
                           "The shared-secret proof is missing or wrong.")

    # ------------------------------------------------------------------ life
    def get_token(self, conn: Connection, name: str) -> tuple[str, Session]:
        """Issue a fresh token for instance ``name`` and bind ``conn`` to its new session.

        Any earlier session of ``name`` ends (``replaced``) and its rename forward is dropped.
        Returns ``(token, session)``; the token is shown once and only its hash is stored.

        The caller checks the shared-secret proof first (:meth:`check_secret_proof`).

        Raises:
            RpcError: -32006 ``instance_held_by_other_uid``.
        """
        now = self._clock()
        fields = _fields(conn, instance=name)
        held = self._store.session_of(name)
        if held is not None:
            if held.live(now) and held.uid != conn.peer.uid:
                self._audit("token_refused", {**fields, "reason": "instance_held_by_other_uid"})
                raise RpcError(ErrorCode.CONFLICT, "instance_held_by_other_uid",
                               f"The instance {name!r} is held by another user.")
            self.kill(held, "replaced")
        self._store.delete_forward(name)
        token, s = self._issue(conn, name, now)
        self._audit("token_issued", {**fields, "scopes": sorted(s.scopes), "expires_at": rfc3339(s.expires_at)})
        return token, s

    def _issue(self, conn: Connection, instance_id: str, now: float) -> tuple[str, Session]:
        token = base64.urlsafe_b64encode(self._token_bytes(TOKEN_BYTES)).rstrip(b"=").decode()
        peer = conn.peer
        s = Session(token_hash(token), instance_id, peer.uid, peer.gid, peer.pid,
                    conn.admission.scopes, now, now + self._config.token_ttl_s)
        if conn.admission.bind == "process":
            s.bound_pid, s.bound_start_time = peer.pid, peer.start_time
        self._store.put_session(s)
        self._store.touch_instance(instance_id, now)
        self._bindings.bind(conn, s)
        return token, s

    def authenticate(self, conn: Connection, token: str) -> Session:
        """Bind ``conn`` to the session of ``token`` (from an earlier ``get_token``).

        Raises:
            RpcError: -32001 with reason ``token_invalid`` (unknown or revoked),
                ``token_uid_mismatch`` (issued to another UID), ``token_process_mismatch``
                (bound to another process) or ``token_expired``; each is audited.
        """
        h = token_hash(token)
        s = self._store.get_session(h)
        now = self._clock()
        if s is None or not hmac.compare_digest(s.token_hash, h) or s.revoked:
            self._refuse(conn, "auth_failed", "token_invalid", "Unknown or revoked token.",
                         {"reason": "token_invalid"})
        elif s.uid != conn.peer.uid:
            self._refuse(conn, "token_uid_mismatch", "token_uid_mismatch", "This token was issued to another user.",
                         {"instance": s.instance_id, "token_uid": s.uid})
        elif s.bound_pid is not None and (conn.peer.pid, conn.peer.start_time) != (s.bound_pid, s.bound_start_time):
            self._refuse(conn, "token_process_mismatch", "token_process_mismatch",
                         "This token is bound to another process.", {"instance": s.instance_id, "token_pid": s.bound_pid})
        elif now >= s.expires_at:
            self._refuse(conn, "auth_failed", "token_expired", "The session token has expired.",
                         {"reason": "token_expired", "instance": s.instance_id})
        self._bindings.bind(conn, s)
        self._store.touch_instance(s.instance_id, now)
        self._audit("authenticated", _fields(conn, instance=s.instance_id))
        return s

    def _refuse(self, conn: Connection, event: str, reason: str, message: str, audit: dict[str, Any]) -> NoReturn:
        """Audit ``event`` (the connection's fields plus ``audit``) and raise -32001 ``reason``."""
        self._audit(event, _fields(conn, **audit))
        raise RpcError(ErrorCode.UNAUTHENTICATED, reason, message)

    def kill(self, s: Session, why: str) -> None:
        """End session ``s`` (revoked, replaced, or its peer no longer admitted): mark it
        revoked, delete it from the store, unbind its connections, audit ``session_ended``."""
        s.revoked, s.ended = True, why
        self._store.delete_session(s)
        self._bindings.unbind_session(s)
        self._audit("session_ended", {"instance": s.instance_id, "uid": s.uid, "why": why})

    def rename(self, conn: Connection, s: Session, new: str) -> str:
        """Move session ``s`` (bound to ``conn``) to instance ``new``, with its mailbox; mail to
        the old name is forwarded for ``rename_forward_s``. Returns the old name.

        A dead session holding ``new`` is deleted; a forward from ``new`` is dropped.

        Raises:
            RpcError: -32602 ``same_instance_id``; -32003 ``rename_rate_limited`` (one rename per
                ``rename_interval_s`` per session, ``data.retry_after_s`` in whole seconds);
                -32006 ``instance_taken`` if a live session holds ``new``.
        """
        old, now, cfg = s.instance_id, self._clock(), self._config
        if new == old:
            raise RpcError(ErrorCode.INVALID_PARAMS, "same_instance_id", "new_id is the current instance id.")
        if s.last_rename_at is not None and now - s.last_rename_at < cfg.rename_interval_s:
            wait = math.ceil(cfg.rename_interval_s - (now - s.last_rename_at))
            self._audit("rate_limited", {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": old,
                                         "method": "rename", "retry_after_s": wait})
            raise RpcError(ErrorCode.RATE_LIMITED, "rename_rate_limited",
                           f"One rename per {cfg.rename_interval_s:g} s; retry in {wait} s.", retry_after_s=wait)
        holder = self._store.session_of(new)
        if holder is not None:
            if holder.live(now):
                raise RpcError(ErrorCode.CONFLICT, "instance_taken", f"The instance {new!r} is taken.")
            self._store.delete_session(holder)
        store = self._store
        store.delete_forward(new)
        s.instance_id, s.last_rename_at = new, now
        store.update_session(s, previous_instance_id=old)
        store.rename_instance(old, new, now)
        store.move_mailbox(old, new)
        store.put_forward(old, new, now + cfg.rename_forward_s)
        self._bindings.rename(old, new)
        self._audit("renamed", {"conn": conn.conn_id, "uid": conn.peer.uid, "from": old, "to": new})
        return old
