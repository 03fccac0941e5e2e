"""Quotas charged to the sender (issue 14): per sending UID, the messages and bytes it has
queued in mailboxes other than its own.

The model is dbus-broker's: every message queued for a peer is charged to the *sending* user
(``user_charge`` in dbus-broker's ``src/bus/peer.c`` and ``src/bus/user.c``), so one user
cannot fill the broker's memory by spreading mail over many mailboxes, each within its own
bound. Here a charge is taken when a message is queued (:meth:`SenderQuota.charge`) and given
back when it leaves its mailbox for good: ``ack``, unclaimed-mail expiry, a name ``release``
(:meth:`SenderQuota.uncharge`). A lease running out does not give it back (the message is
still queued). Mail a UID sends to its own instance name is not charged.

At start the charges are rebuilt from the stored messages (:meth:`SenderQuota.rebuild`). The
store keeps each message's sender *name*, not its UID: the UID is taken as the name's owner
(``names`` table, issue 13), else the UID of the session holding the name, else the message is
not charged. That is an approximation: a name released and claimed by another UID since the
message was sent charges the new owner.

Pure: no I/O; the audit sink and the store are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ErrorCode, RpcError
from ..store import Store
from .config import BrokerConfig
from .effects import AuditSink


class SenderQuota:
    """Per-UID counts of queued messages and bytes, and the refusal past the quota.

    Args:
        config: ``max_sender_queued_messages`` and ``max_sender_queued_bytes``.
        audit: the audit sink (``sender_quota_exceeded``, once per refused stretch of a UID).

    Memory: one dict entry per charged message (its id, UID and size), besides one per UID.
    """

    __slots__ = ("_audit", "_by_id", "_by_uid", "_config", "_over")

    def __init__(self, config: BrokerConfig, audit: AuditSink) -> None:
        self._config, self._audit = config, audit
        self._by_uid: dict[int, list[int]] = {}  # uid -> [messages, bytes]
        self._by_id: dict[str, tuple[int, int]] = {}  # message id -> (uid, bytes)
        self._over: set[int] = set()  # UIDs in a refused stretch (audited once)

    def usage(self, uid: int) -> tuple[int, int]:
        """``(messages, bytes)`` that ``uid`` has queued in other mailboxes now."""
        got = self._by_uid.get(uid)
        return (got[0], got[1]) if got else (0, 0)

    def check(self, uid: int, size: int, target: str) -> None:
        """Refuse one more message of ``size`` bytes from ``uid`` past its quota; the first
        refusal of a stretch is audited, the stretch ends at the next message let through.

        Raises:
            RpcError: -32007 ``sender_quota_exceeded`` with ``data`` = ``to``,
                ``queued_messages``, ``queued_bytes``, ``max_sender_queued_messages``,
                ``max_sender_queued_bytes`` (the quota: there is no retry time, the mail
                must be read first).
        """
        cfg = self._config
        count, used = self.usage(uid)
        if count < cfg.max_sender_queued_messages and used + size <= cfg.max_sender_queued_bytes:
            self._over.discard(uid)
            return
        if uid not in self._over:
            self._over.add(uid)
            self._audit("sender_quota_exceeded", {"uid": uid, "to": target, "queued_messages": count,
                                                  "queued_bytes": used})
        raise RpcError(ErrorCode.MAILBOX_FULL, "sender_quota_exceeded",
                       f"UID {uid} has too much mail waiting in other mailboxes "
                       f"({count} messages, {used} bytes); wait until it is read.",
                       to=target, queued_messages=count, queued_bytes=used,
                       max_sender_queued_messages=cfg.max_sender_queued_messages,
                       max_sender_queued_bytes=cfg.max_sender_queued_bytes)

    def charge(self, uid: int, msg_id: str, size: int) -> None:
        """Count message ``msg_id`` of ``size`` bytes against ``uid`` (idempotent per id)."""
        if msg_id in self._by_id:
            return
        self._by_id[msg_id] = (uid, size)
        got = self._by_uid.get(uid)
        if got is None:
            self._by_uid[uid] = [1, size]
        else:
            got[0] += 1
            got[1] += size

    def uncharge(self, ids: Iterable[str]) -> None:
        """Give back the charges of the messages ``ids`` (deleted); unknown ids are skipped."""
        for msg_id in ids:
            hit = self._by_id.pop(msg_id, None)
            if hit is None:
                continue
            uid, size = hit
            got = self._by_uid[uid]
            got[0] -= 1
            got[1] -= size
            if got[0] <= 0:
                del self._by_uid[uid]

    def rebuild(self, store: Store) -> int:
        """Charge every queued message of ``store`` to its sender's UID (see the module
        docstring for how the UID is found). Returns how many were charged. O(messages)."""
        n = 0
        for box in store.mailbox_names():
            for item in store.queued(box):
                sender = item.message.from_
                if sender == box:
                    continue
                uid = _sender_uid(store, sender)
                if uid is not None:
                    self.charge(uid, item.message.id, item.size_bytes)
                    n += 1
        return n


def _sender_uid(store: Store, sender: str) -> int | None:
    """The owner of the name ``sender``, else the UID of the session holding it, else None."""
    uid = store.name_owner(sender)
    if uid is None:
        holder = store.session_of(sender)
        uid = None if holder is None else holder.uid
    return uid
