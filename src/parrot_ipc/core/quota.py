"""Quotas charged to the sender (issue 14): per sending UID, the messages and bytes it has
queued in mailboxes other than its own.

The model is dbus-broker's: every message queued for a peer is charged to the *sending* user
(``user_charge`` in dbus-broker's ``src/bus/peer.c`` and ``src/bus/user.c``), so one user
cannot fill the broker's memory or disk by spreading mail over many mailboxes, each within its
own bound. The core names the payer of each message it queues
(:attr:`parrot_ipc.store.base.StoredMessage.payer`); the store keeps the per-UID sums
(:meth:`parrot_ipc.store.base.Store.sender_usage`, :mod:`parrot_ipc.store.charges`), takes
them when a message is queued and gives them back when it leaves for good (``ack``,
unclaimed-mail expiry, a name ``release``). A lease running out does not give it back (the
message is still queued). Mail a UID sends to its own instance name is not charged. The
durable store keeps each message's payer in its row (schema version 6), so the sums survive a
restart without a per-message map in memory.

Pure: no I/O; the audit sink and the store are passed in.
"""

from __future__ import annotations

from ..errors import ErrorCode, RpcError
from ..store import Store
from .config import BrokerConfig
from .effects import AuditSink


class SenderQuota:
    """The refusal past the sender quota, read from the store's per-UID sums.

    Args:
        config: ``max_sender_queued_messages`` and ``max_sender_queued_bytes``.
        audit: the audit sink (``sender_quota_exceeded``, once per refused stretch of a UID).
        store: the store that keeps the sums (:meth:`~parrot_ipc.store.base.Store.sender_usage`).

    Memory: one entry per UID in a refused stretch; nothing per message.
    """

    __slots__ = ("_audit", "_config", "_over", "_store")

    def __init__(self, config: BrokerConfig, audit: AuditSink, store: Store) -> None:
        self._config, self._audit, self._store = config, audit, store
        self._over: set[int] = set()  # UIDs in a refused stretch (audited once)

    def usage(self, uid: int) -> tuple[int, int]:
        """``(messages, bytes)`` that ``uid`` has queued in other mailboxes now."""
        return self._store.sender_usage(uid)
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
