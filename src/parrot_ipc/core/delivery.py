"""Mail delivery: enqueue within bounds, follow rename forwards, push to subscribers, lease to
pollers, and expire what nobody will read.

Rules from ``docs/protocol.md`` ("Semantics", "Delivery details"): ``receive`` leases messages
for ``lease_s`` seconds; ``ack`` deletes them; a lease that runs out puts the message back and
it is delivered again. A subscriber gets at most ``push_window`` unacked pushes. Mail to a name
nobody holds is kept ``unclaimed_mail_ttl_s`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from msgspec import UNSET

from ..store import Store, StoredMessage
from . import protocol as p
from .config import BrokerConfig
from .connection import Bindings, Connection
from .effects import AuditSink, Effect, Push, Wake
from .limits import check_mailbox, check_unclaimed, message_size
from .quota import SenderQuota
from .timefmt import IdGenerator, rfc3339

#: The outbox's mailbox (core/federation.py re-exports it): not an instance id, so no
#: session can take it.
OUTBOX: Final = "@outbox"

#: Rename forwards followed at most (a -> b -> c ...), so a cycle cannot loop.
MAX_FORWARD_HOPS: Final = 8


class Delivery:
    """Moves messages from senders to mailboxes to connections, and collects the effects.

    Args:
        store: where mailboxes, leases and forwards live.
        config: ``lease_s``, ``push_window``, the mailbox bounds, ``unclaimed_mail_ttl_s``.
        clock: wall clock, seconds since the Unix epoch.
        bindings: which connections act as which instance (and their push windows).
        ids: the message id generator (ids sort by arrival).
        audit: the audit sink (``mail_expired``).
        quota: the sender quota (issue 14); default one over ``store`` with ``config``'s bounds.
    """

    __slots__ = ("_audit", "_bindings", "_clock", "_config", "_effects", "_ids", "_store", "quota")

    def __init__(self, *, store: Store, config: BrokerConfig, clock: Callable[[], float],
                 bindings: Bindings, ids: IdGenerator, audit: AuditSink,
                 quota: SenderQuota | None = None) -> None:
        self._store, self._config, self._clock = store, config, clock
        self._bindings, self._ids, self._audit = bindings, ids, audit
        self._effects: list[Effect] = []
        #: The per-sender-UID charges of queued mail (issue 14).
        self.quota = quota if quota is not None else SenderQuota(config, audit, store)

    # ------------------------------------------------------------------ effects
    def emit(self, effect: Effect) -> None:
        """Queue one effect for the shell."""
        self._effects.append(effect)

    def take_effects(self) -> list[Effect]:
        """Hand over (and clear) the effects queued since the last call."""
        eff, self._effects = self._effects, []
        return eff

    # ------------------------------------------------------------------ sending
    def held(self, name: str, now: float) -> bool:
        """True if a live session holds instance ``name`` at ``now`` (epoch s). The outbox
        (``@outbox``, docs/federation.md) counts as held: it is never unclaimed mail."""
        if name == OUTBOX:
            return True
        holder = self._store.session_of(name)
        return holder is not None and holder.live(now)

    def resolve(self, name: str, now: float) -> tuple[str, bool]:
        """Follow rename forwards from ``name``, stopping at a live holder, a name with no
        forward, a forward to a name of another owner (mail never crosses UIDs through a
        forward, issue 13), or after :data:`MAX_FORWARD_HOPS`. Returns ``(target, forwarded)``."""
        forwarded, store = False, self._store
        for _ in range(MAX_FORWARD_HOPS):
            if self.held(name, now):
                break
            nxt = store.get_forward(name, now)
            if nxt is None or store.name_owner(nxt) != store.name_owner(name):
                break
            name, forwarded = nxt, True
        return name, forwarded

    def enqueue(self, sender: str, target: str, content: str, data: dict[str, Any] | None,
                now: float, reply_to: str | None = None, *, to: str | None = None,
                sender_uid: int | None = None) -> p.Message:
        """Queue one message from ``sender`` in ``target``'s mailbox (not yet delivered: see
        :meth:`deliver`), answering message ``reply_to`` if given. Returns the stored message,
        with a fresh id and ``sent_at``; its ``to`` is ``to`` if given (a ``name@node`` queued
        in the outbox), else ``target``. With ``sender_uid``, mail to another name is charged
        to that UID (:class:`SenderQuota`: the stored message names it as its payer).

        Raises:
            RpcError: -32007 ``sender_quota_exceeded`` past ``max_sender_queued_messages`` or
                ``max_sender_queued_bytes`` of ``sender_uid``;
            RpcError: -32007 ``mailbox_full`` past ``max_mailbox_messages`` or
                ``max_mailbox_bytes``; -32007 ``too_many_unclaimed_mailboxes`` when this would
                open a mailbox for an unheld name past ``max_unclaimed_mailboxes``.
        """
        size = message_size(content, data)
        count, used = self._store.mailbox_usage(target)
        check_mailbox(self._config, target, size, count, used)
        payer = sender_uid if target != sender else None
        if payer is not None:
            self.quota.check(payer, size, target)
        if count == 0 and not self.held(target, now):
            check_unclaimed(self._config, target, self._unclaimed(now))
        msg = p.Message(id=self._ids.next(now), from_=sender, to=to or target, content=content,
                        data=UNSET if data is None else data, sent_at=rfc3339(now),
                        reply_to=UNSET if reply_to is None else reply_to)
        self._store.enqueue(StoredMessage(msg, target, size, payer=payer))
        return msg

    def _unclaimed(self, now: float) -> int:
        """How many mailboxes belong to names nobody holds. O(mailboxes); only on a new unknown name."""
        return sum(1 for name in self._store.mailbox_names() if not self.held(name, now))

    # ------------------------------------------------------------------ delivering
    def deliver(self, name: str, *, wake: bool = True) -> None:
        """Push ready mail for ``name`` to its subscribers (within their ``push_window``), then,
        if ``wake``, emit a :class:`Wake` for its long-polls."""
        conns = self._bindings.connections(name)
        if conns:
            now = self._clock()
            until = now + self._config.lease_s
            for c in conns:
                if not self._push(c, name, now, until):
                    break
        if wake:
            self._effects.append(Wake(name))

    def _push(self, conn: Connection, name: str, now: float, until: float) -> bool:
        """Lease and push mail for ``name`` to ``conn`` if it may take some; False once the
        mailbox has nothing ready (no other connection needs a try)."""
        room, s = conn.push_room(self._config.push_window), conn.session
        # A connection of an expired, purged or replaced session can still be bound under
        # this name (and may be another UID's): never push to it.
        if not conn.subscribed or room <= 0 or s is None or not s.live(now):
            return True
        msgs = self._store.lease(name, room, until)
        for m in msgs:
            self._bindings.pushed(conn, m.id)
            self._effects.append(Push(conn, p.encode_notification("message", m)))
        return bool(msgs)

    def lease(self, instance_id: str, max_count: int) -> list[p.Message]:
        """Lease up to ``max_count`` ready messages of ``instance_id`` for ``lease_s`` seconds."""
        return self._store.lease(instance_id, max_count, self._clock() + self._config.lease_s)

    def ack(self, instance_id: str, ids: Iterable[str]) -> int:
        """Delete the messages ``ids`` leased to ``instance_id``; push more into the freed
        window. Returns how many were deleted."""
        done = self._store.ack(instance_id, ids)
        self._bindings.settle(done)
        self.deliver(instance_id, wake=False)
        return len(done)

    # ------------------------------------------------------------------ time-driven
    def release_expired(self, now: float) -> None:
        """Put mail whose lease ran out by ``now`` back in its mailbox, and deliver it again."""
        names: set[str] = set()
        released = self._store.release_expired(now)
        self._bindings.settle(mid for _, mid in released)
        for box, _ in released:
            names.add(box)
        for name in names:
            self.deliver(name)

    def expire_unclaimed(self, now: float) -> None:
        """Delete mail older than ``unclaimed_mail_ttl_s`` to names nobody holds (audited as
        ``mail_expired`` with a count)."""
        cutoff_ms = max(0, int((now - self._config.unclaimed_mail_ttl_s) * 1000))
        before = f"{cutoff_ms:012x}000000"  # message ids start with 12 hex digits of epoch ms
        for name in self._store.mailbox_names():
            if self.held(name, now):
                continue
            gone = self._store.expire_mail(name, before)
            self._bindings.settle(gone)
            if gone:
                self._audit("mail_expired", {"instance": name, "count": len(gone)})
