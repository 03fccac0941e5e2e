"""Per-UID sums of queued mail: the sender quota's measure (issue 14), kept by the store.

Each queued message may name a ``payer`` (:attr:`parrot_ipc.store.base.StoredMessage.payer`):
the UID that sent it to another name. The store adds a message to its payer's sums when it is
queued and takes it off when it leaves for good (ack, expiry, release), so the sums cost one
entry per UID, never one per message (the model is dbus-broker's ``user_charge``,
``src/bus/user.c``). The rules (who pays, what the bounds are) are the core's:
:mod:`parrot_ipc.core.quota`.
"""

from __future__ import annotations


class Charges:
    """``uid -> [messages, bytes]`` of the queued mail charged to each UID.

    Memory: one small list per UID with mail queued, whatever the number of messages.
    """

    __slots__ = ("_by_uid",)

    def __init__(self) -> None:
        self._by_uid: dict[int, list[int]] = {}

    def add(self, uid: int | None, size_bytes: int, count: int = 1) -> None:
        """Charge ``count`` messages of ``size_bytes`` in all to ``uid`` (None: nobody)."""
        if uid is None:
            return
        got = self._by_uid.get(uid)
        if got is None:
            self._by_uid[uid] = [count, size_bytes]
        else:
            got[0] += count
            got[1] += size_bytes

    def remove(self, uid: int | None, size_bytes: int) -> None:
        """Give back one message of ``size_bytes`` charged to ``uid`` (None: nobody)."""
        if uid is None:
            return
        got = self._by_uid.get(uid)
        if got is None:
            return
        got[0] -= 1
        got[1] -= size_bytes
        if got[0] <= 0:
            del self._by_uid[uid]

    def usage(self, uid: int) -> tuple[int, int]:
        """``(messages, bytes)`` charged to ``uid`` now; ``(0, 0)`` if none."""
        got = self._by_uid.get(uid)
        return (got[0], got[1]) if got else (0, 0)
