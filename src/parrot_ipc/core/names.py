"""Names are owned: an instance name belongs to the UID that first registered it (issue 13).

Rules (``docs/protocol.md``, "Names are owned" and "Sessions of one owner"):

- The first ``get_token`` (or ``rename`` onto) a name nobody owns makes the caller's UID its
  owner, in the store, so it survives restarts; that first claim is audited (``name_claimed``,
  with the mail that was waiting for it).
- Another UID gets -32006 ``instance_owned_by_other_uid`` for that name, whether or not the owner
  is online (``get_token``, ``rename`` onto it); a rule's ``names`` patterns may narrow what a
  peer may claim at all (-32002 ``instance_name_not_allowed``).
- The owner frees a name with ``release``, an admin with ``admin_release``; with
  ``name_idle_release_s`` set, the tick frees names nobody holds whose mailbox is empty and that
  forward nowhere. Freeing deletes the mail left, so it never reaches another UID.
- Within one UID, ``get_token``'s ``if_taken`` decides what happens when a live session with a
  connection bound holds the name: take it over (v1), take ``NAME-2`` .. ``NAME-32``, or -32006.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from ..errors import ErrorCode, RpcError
from ..store import Session, Store
from . import protocol as p
from .config import BrokerConfig
from .connection import Bindings, Connection
from .effects import AuditSink

#: ``if_taken = "suffix"`` tries ``NAME-2`` up to ``NAME-<MAX_SUFFIX>``.
MAX_SUFFIX: Final = 32
#: Sorts after every message id (18 lower-case hex digits): "delete all the mail".
_AFTER_EVERY_ID: Final = "~"
_INSTANCE_ID: Final = re.compile(p.INSTANCE_ID_PATTERN)


class Names:
    """Name ownership over the store.

    Args:
        store: where owners, sessions, mailboxes and forwards live.
        config: ``name_idle_release_s``.
        clock: wall clock, seconds since the Unix epoch.
        bindings: which connections are bound now (a holder is "connected" if one is).
        audit: the audit sink (``name_claimed``, ``token_refused``, ``name_refused``,
            ``name_released``, ``instance_suffixed``).
        kill: ends a session (:meth:`parrot_ipc.core.sessions.Sessions.kill`).
    """

    def __init__(self, *, store: Store, config: BrokerConfig, clock: Callable[[], float],
                 bindings: Bindings, audit: AuditSink, kill: Callable[[Session, str], None]) -> None:
        self._store, self._config, self._clock = store, config, clock
        self._bindings, self._audit, self._kill = bindings, audit, kill

    # ------------------------------------------------------------------ claiming
    def check(self, conn: Connection, name: str, method: str) -> None:
        """Refuse ``conn`` a claim of ``name`` (by ``method``) that it may not make.

        Raises:
            RpcError: -32002 ``instance_name_not_allowed`` (the rule's ``names`` do not match);
                -32006 ``instance_owned_by_other_uid`` (another UID owns the name). Both audited
                as ``token_refused`` for ``get_token`` (the event protocol v1 used) and as
                ``name_refused`` otherwise.
        """
        uid = conn.peer.uid
        fields = {"conn": conn.conn_id, "uid": uid, "instance": name, "method": method}
        event = "token_refused" if method == "get_token" else "name_refused"
        if not conn.admission.may_claim(name):
            self._audit(event, {**fields, "reason": "instance_name_not_allowed", "rule": conn.admission.rule})
            raise RpcError(ErrorCode.FORBIDDEN, "instance_name_not_allowed",
                           f"This peer's rule does not allow the instance name {name!r}.", instance_id=name)
        owner = self._store.name_owner(name)
        if owner is not None and owner != uid:
            self._audit(event, {**fields, "reason": "instance_owned_by_other_uid", "owner_uid": owner})
            raise RpcError(ErrorCode.CONFLICT, "instance_owned_by_other_uid",
                           f"The instance name {name!r} belongs to another user.", instance_id=name)

    def connected(self, name: str) -> bool:
        """True if a live session holds ``name`` and a connection is bound to it now."""
        holder = self._store.session_of(name)
        return holder is not None and holder.live(self._clock()) and self._bindings.online(name, holder)

    def pick(self, conn: Connection, name: str, if_taken: p.IfTaken) -> str:
        """The name ``get_token`` should take for ``conn``: ``name``, or with ``if_taken =
        "suffix"`` the first ``NAME-<n>`` that ``conn`` may claim and nobody connected holds.

        Raises:
            RpcError: those of :meth:`check`; -32006 ``instance_taken`` when ``if_taken`` is
                ``"fail"`` and a connected session holds ``name``, or no suffix is free.
        """
        self.check(conn, name, "get_token")
        if if_taken == "replace" or not self.connected(name):
            return name
        if if_taken == "suffix":
            for n in range(2, MAX_SUFFIX + 1):
                cand = f"{name}-{n}"
                if self._free_for(conn, cand):
                    self._audit("instance_suffixed", {"conn": conn.conn_id, "uid": conn.peer.uid,
                                                      "asked": name, "instance": cand})
                    return cand
        raise RpcError(ErrorCode.CONFLICT, "instance_taken",
                       f"The instance {name!r} is in use by another connected session of your user.",
                       instance_id=name)

    def _free_for(self, conn: Connection, name: str) -> bool:
        """True if ``conn`` may claim ``name`` and no connected session holds it."""
        if not _INSTANCE_ID.match(name) or not conn.admission.may_claim(name):
            return False
        owner = self._store.name_owner(name)
        return (owner is None or owner == conn.peer.uid) and not self.connected(name)

    def claim(self, conn: Connection, name: str, method: str) -> None:
        """Make ``conn``'s UID the owner of ``name`` if nobody owns it (after :meth:`check`).

        The first claim is audited as ``name_claimed`` with ``queued``: the messages that were
        waiting for the name and now go to this UID.
        """
        if self._store.name_owner(name) is not None:
            return
        uid = conn.peer.uid
        self._store.put_name_owner(name, uid, self._clock())
        self._audit("name_claimed", {"conn": conn.conn_id, "uid": uid, "pid": conn.peer.pid, "instance": name,
                                     "method": method, "queued": self._store.mailbox_usage(name)[0]})

    # ------------------------------------------------------------------ releasing
    def release(self, conn: Connection, name: str, *, admin: bool) -> p.ReleaseResult:
        """Free ``name``: end the session holding it, drop its forward and the mail left in its
        mailbox, forget its owner. Without ``admin`` only the owner's UID may.

        Raises:
            RpcError: -32005 ``name_not_owned`` (nobody owns it); -32006
                ``instance_owned_by_other_uid`` (not ``admin`` and another UID owns it).
        """
        owner = self._store.name_owner(name)
        if owner is None:
            raise RpcError(ErrorCode.NOT_FOUND, "name_not_owned", f"Nobody owns the instance name {name!r}.",
                           instance_id=name)
        if not admin and owner != conn.peer.uid:
            raise RpcError(ErrorCode.CONFLICT, "instance_owned_by_other_uid",
                           f"The instance name {name!r} belongs to another user.", instance_id=name)
        why = f"released by admin uid {conn.peer.uid}" if admin else "released by its owner"
        dropped = self._free(name, owner, why)
        self._audit("name_released", {"conn": conn.conn_id, "uid": conn.peer.uid, "instance": name,
                                      "owner_uid": owner, "dropped": dropped, "admin": admin})
        return p.ReleaseResult(instance_id=name, owner_uid=owner, dropped=dropped)

    def _free(self, name: str, owner: int, why: str) -> int:
        """End the session on ``name``, drop its forward and mail, forget its owner. Returns
        how many messages were deleted."""
        store = self._store
        holder = store.session_of(name)
        if holder is not None:
            self._kill(holder, why)
        store.delete_forward(name)
        gone = store.expire_mail(name, _AFTER_EVERY_ID)
        self._bindings.settle(gone)
        store.delete_name_owner(name)
        return len(gone)

    def release_idle(self, now: float) -> None:
        """With ``name_idle_release_s`` > 0: free every owned name not seen for that long that
        no live session holds, whose mailbox is empty and that forwards nowhere (audited as
        ``name_released`` with ``why = "idle"``). O(owned names)."""
        idle_s = self._config.name_idle_release_s
        if idle_s <= 0:
            return
        store = self._store
        for name, owner in store.name_owners():
            holder = store.session_of(name)
            seen = store.last_seen(name)
            if ((holder is not None and holder.live(now)) or store.mailbox_usage(name)[0]
                    or store.get_forward(name, now) is not None or (seen is not None and now - seen < idle_s)):
                continue
            self._free(name, owner, "idle")
            self._audit("name_released", {"instance": name, "owner_uid": owner, "why": "idle"})

    # ------------------------------------------------------------------ forwards
    def same_owner(self, a: str, b: str) -> bool:
        """True if names ``a`` and ``b`` have the same owner (both may be unowned): a rename
        forward is followed only then, so mail never crosses to another UID through one."""
        return self._store.name_owner(a) == self._store.name_owner(b)
