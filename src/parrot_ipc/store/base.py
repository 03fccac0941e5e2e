"""The store interface the broker keeps its state behind: the records and the protocols.

The broker core calls these methods synchronously and owns all rules (limits, policy, who may
read what); a store only keeps and finds records. :class:`parrot_ipc.store.memory.MemoryStore`
is for throwaway brokers and tests; :class:`parrot_ipc.store.sqlite.SqliteStore` is the durable
one, and is also :class:`Journaled`.

Conventions for every method here: times are seconds since the Unix epoch (``float``, from the
broker's clock); sizes are bytes; a missing record is never an error (lookups return None,
deletes of a missing record do nothing). No method of a store raises for bad input: the core has
already validated it. A mutation must be journaled (see :class:`Journaled`) or it is lost at a
restart, so reads never mutate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the core here would be circular (core imports store)
    from ..core.protocol import Message, SendResult
    from .ops import Op


@dataclass(slots=True)
class Session:
    """One instance's session. Only ``token_hash`` (SHA-256 of the token, 32 bytes) is stored.

    Attributes:
        token_hash: SHA-256 of the bearer token; the token itself is never kept.
        instance_id: the name the session holds (its mailbox).
        uid, gid, pid: the peer's credentials at ``get_token`` (SO_PEERCRED, socket(7));
            ``uid`` is the UID the token is bound to.
        scopes: the scope names granted, e.g. ``{"send", "receive"}``.
        created_at, expires_at: seconds since the epoch; the session is dead from ``expires_at``.
        last_rename_at: seconds since the epoch of the last rename, or None if never renamed.
        revoked: set by the core before it deletes a revoked or replaced session, so connections
            still holding the object see it. Never stored.
        ended: why it ended (``"replaced"``, ``"revoked"``, ...), set with ``revoked``; the
            ``token_revoked`` error carries it as ``data.why``. Never stored.
        bound_pid, bound_start_time: with ``bind = "process"``, the pid and start time
            (``/proc/<pid>/stat`` field 22, in clock ticks; proc(5)) of the one process this
            token works from. None for a UID-bound token.
    """

    token_hash: bytes
    instance_id: str
    uid: int
    gid: int
    pid: int
    scopes: frozenset[str]
    created_at: float
    expires_at: float
    last_rename_at: float | None = None
    revoked: bool = False
    bound_pid: int | None = None
    bound_start_time: int | None = None
    ended: str | None = None

    def live(self, now: float) -> bool:
        """True while not revoked and ``now`` (seconds since the epoch) is before ``expires_at``."""
        return not self.revoked and now < self.expires_at


@dataclass(slots=True)
class StoredMessage:
    """A queued message, the mailbox it sits in, its size in bytes, and its lease deadline.

    Attributes:
        message: the message as it will be delivered (``message.to`` stays the name it was
            sent to, even after a rename moves it to another mailbox).
        mailbox: the instance name whose queue holds it.
        size_bytes: its size as counted against the mailbox's byte limit.
        lease_until: 0 while the message is ready for delivery, else the second since the epoch
            at which an un-acked lease runs out (the message is then ready again).
        payer: the UID its ``size_bytes`` are charged to (the sender quota, issue 14), or None
            when it is not charged (mail a UID sends to its own name, the postmaster's).
    """

    message: Message
    mailbox: str
    size_bytes: int
    lease_until: float = 0.0
    payer: int | None = None


class Store(Protocol):
    """What the broker needs kept: sessions, instances, mailboxes, rename forwards and
    idempotency keys. Methods never raise for a missing record; they return None (or nothing).

    Reads never change state. Every mutation is one method call, so a journaled store can record
    it (see :class:`Journaled`).
    """

    # sessions
    def put_session(self, session: Session) -> None:
        """Add ``session`` (or replace the one with its ``token_hash``); it becomes the session
        of ``session.instance_id``."""
        ...

    def get_session(self, token_hash: bytes) -> Session | None:
        """The session whose token hashes (SHA-256) to ``token_hash``, or None. Expired or
        revoked sessions may still be returned until :meth:`purge`: the caller checks
        :meth:`Session.live`."""
        ...

    def session_of(self, instance_id: str) -> Session | None:
        """The session that holds the name ``instance_id``, or None."""
        ...

    def update_session(self, session: Session, previous_instance_id: str | None = None) -> None:
        """Record changes the caller made to ``session`` (already stored). After a rename,
        ``previous_instance_id`` is the old name: it no longer maps to ``session``."""
        ...

    def delete_session(self, session: Session) -> None:
        """Drop ``session`` (by ``token_hash``); its name is free again if it still held it."""
        ...

    def sessions(self) -> Iterable[Session]:
        """A snapshot of the sessions that hold a name (one per instance id), in no set order."""
        ...

    # instances
    def touch_instance(self, instance_id: str, now: float) -> None:
        """Record that ``instance_id`` was seen at ``now`` (seconds since the epoch)."""
        ...

    def last_seen(self, instance_id: str) -> float | None:
        """When ``instance_id`` was last seen (seconds since the epoch), or None if never."""
        ...

    def instance_ids(self) -> Iterable[str]:
        """A snapshot of every instance id with a last-seen time."""
        ...

    def rename_instance(self, old: str, new: str, now: float) -> None:
        """Move the last-seen record from ``old`` to ``new``, seen at ``now`` (seconds)."""
        ...

    # name owners (issue 13: names are owned by the UID that first registered them)
    def name_owner(self, instance_id: str) -> int | None:
        """The UID that owns the name ``instance_id``, or None if nobody owns it."""
        ...

    def put_name_owner(self, instance_id: str, uid: int, now: float) -> None:
        """Record that ``uid`` owns ``instance_id`` from ``now`` (seconds since the epoch)."""
        ...

    def delete_name_owner(self, instance_id: str) -> None:
        """Free the name ``instance_id`` (nobody owns it afterwards)."""
        ...

    def name_owners(self) -> Iterable[tuple[str, int]]:
        """A snapshot of every owned name as ``(instance_id, uid)``, in no set order."""
        ...

    # mailboxes
    def enqueue(self, item: StoredMessage) -> None:
        """Queue ``item`` at the back of ``item.mailbox`` (ids sort by arrival). Limits are the
        caller's to check first (:meth:`mailbox_usage`)."""
        ...

    def mailbox_usage(self, mailbox: str) -> tuple[int, int]:
        """``(message count, total size in bytes)`` queued in ``mailbox``, leased ones included;
        ``(0, 0)`` for an unknown mailbox."""
        ...

    def lease(self, mailbox: str, max_count: int, lease_until: float) -> list[Message]:
        """Lease up to ``max_count`` ready messages of ``mailbox``, oldest first, until
        ``lease_until`` (seconds since the epoch). Returns them (empty if none is ready)."""
        ...

    def ack(self, mailbox: str, ids: Iterable[str]) -> list[str]:
        """Delete the messages of ``mailbox`` with these ids, leased or not. Returns the ids
        that were there (unknown ids are skipped)."""
        ...

    def release_expired(self, now: float) -> list[tuple[str, str]]:
        """Make every message whose lease ran out by ``now`` (seconds) ready again. Returns
        ``(mailbox, id)`` of each, in lease-expiry order (ids only: a lease holds no message)."""
        ...

    def next_lease_expiry(self) -> float | None:
        """The earliest lease deadline (seconds since the epoch), or None if nothing is leased.
        May be a lease already acked (the caller's tick then finds nothing to release)."""
        ...

    def move_mailbox(self, old: str, new: str) -> None:
        """Move every message of ``old`` (leases kept) into ``new``, merged in id order."""
        ...

    def sender_usage(self, uid: int) -> tuple[int, int]:
        """``(message count, total size in bytes)`` of the queued messages charged to ``uid``
        (:attr:`StoredMessage.payer`): the sender quota's measure (issue 14). O(1)."""
        ...

    def mailbox_names(self) -> Iterable[str]:
        """A snapshot of the names that have at least one queued message."""
        ...

    def queued(self, mailbox: str) -> list[StoredMessage]:
        """A snapshot of the messages queued in ``mailbox`` (leased ones included), in id
        order; empty for an unknown mailbox. O(messages in it): for start-up, not requests."""
        ...

    def expire_mail(self, mailbox: str, before_id: str) -> list[str]:
        """Delete the messages of ``mailbox`` whose id sorts before ``before_id``, leased or
        not (ids sort by arrival time: ``core/timefmt.py``). Returns the deleted ids."""
        ...

    # rename forwards
    def put_forward(self, old: str, new: str, until: float) -> None:
        """Forward mail for ``old`` to ``new`` until ``until`` (seconds since the epoch)."""
        ...

    def get_forward(self, name: str, now: float) -> str | None:
        """Where mail for ``name`` is forwarded at ``now``, or None. An expired forward reads as
        None and stays stored until :meth:`purge` (a read never mutates)."""
        ...

    def delete_forward(self, name: str) -> None:
        """Drop the forward from ``name`` (when the name is taken again), if any."""
        ...

    # idempotency keys
    def get_idempotent(self, sender: str, key: str, now: float) -> SendResult | None:
        """The result of the ``send`` that ``sender`` made with idempotency ``key``, if it is
        still kept at ``now`` (seconds since the epoch); else None."""
        ...

    def put_idempotent(self, sender: str, key: str, result: SendResult, until: float) -> None:
        """Keep ``result`` for ``(sender, key)`` until ``until`` (seconds since the epoch)."""
        ...

    def purge(self, now: float) -> None:
        """Drop what has expired by ``now`` (seconds since the epoch): sessions that are not
        :meth:`Session.live`, forwards and idempotency keys whose ``until`` is <= ``now``."""
        ...


@runtime_checkable
class Journaled(Protocol):
    """A store whose mutations must be committed before responses that saw them are sent.

    Every mutation appends a journal op (:mod:`parrot_ipc.store.ops`) and raises
    ``written_seq`` (a count of mutations since open). The shell's committer takes the ops
    (:meth:`take_pending`), writes them with :meth:`apply_ops` in one worker thread, and then
    knows the store is durable up to the seq it took. A :class:`MemoryStore` is not journaled:
    the shell sends its responses at once. What is durable is not the store's to know: the
    :class:`parrot_ipc.store.committer.Committer` owns ``durable_seq``.
    """

    written_seq: int

    def take_pending(self) -> tuple[list[Op], int]:
        """Hand over every pending op and the ``written_seq`` they reach: ``(ops, seq)``."""
        ...

    def requeue(self, ops: list[Op], keep_lease: Callable[[str], bool] | None = None) -> None:
        """Put back ``ops`` whose commit failed, ahead of newer ones (every op is idempotent).
        Leases they took are rolled back (ready at once), except the message ids for which
        ``keep_lease(id)`` is True (issue 14: a failed commit leases nothing)."""
        ...

    def apply_ops(self, ops: list[Op]) -> None:
        """Write ``ops`` in one transaction. Raises sqlite3.Error (rolled back; requeue them)."""
        ...

    def checkpoint_due(self) -> bool:
        """True when the write-ahead log should be copied into the database
        (https://sqlite.org/wal.html#ckpt)."""
        ...

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database. Blocks: run it in the writer thread.
        Raises sqlite3.Error."""
        ...
