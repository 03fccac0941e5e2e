"""The store interface the broker keeps its state behind: records and the Store protocol.

The broker core calls these methods synchronously and owns all rules; a store only keeps and
finds records. :class:`parrot_ipc.store.memory.MemoryStore` is for throwaway brokers and tests;
:class:`parrot_ipc.store.sqlite.SqliteStore` is the durable one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..core.protocol import Message, SendResult


@dataclass(slots=True)
class Session:
    """One instance's session. Only ``token_hash`` (SHA-256 of the token) is ever stored.

    Times are seconds since the Unix epoch. ``uid`` is the UID the token is bound to.
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
    #: With ``bind = "process"``: the pid and start time (``/proc/<pid>/stat`` field 22) of the
    #: one process this token works from. None for a UID-bound token.
    bound_pid: int | None = None
    bound_start_time: int | None = None

    def live(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


@dataclass(slots=True)
class StoredMessage:
    """A queued message, the mailbox it sits in, its size in bytes, and its lease deadline.

    ``lease_until`` is 0 while the message is ready for delivery, else the epoch second at
    which an un-acked lease runs out.
    """

    message: Message
    mailbox: str
    size_bytes: int
    lease_until: float = 0.0



class Store(Protocol):
    """What the broker needs kept. Methods never raise for a missing record; they return None."""

    # sessions
    def put_session(self, session: Session) -> None: ...
    def get_session(self, token_hash: bytes) -> Session | None: ...
    def session_of(self, instance_id: str) -> Session | None: ...
    def update_session(self, session: Session, previous_instance_id: str | None = None) -> None: ...
    def delete_session(self, session: Session) -> None: ...
    def sessions(self) -> Iterable[Session]: ...

    # instances
    def touch_instance(self, instance_id: str, now: float) -> None: ...
    def last_seen(self, instance_id: str) -> float | None: ...
    def instance_ids(self) -> Iterable[str]: ...
    def rename_instance(self, old: str, new: str, now: float) -> None: ...

    # mailboxes
    def enqueue(self, item: StoredMessage) -> None: ...
    def mailbox_usage(self, mailbox: str) -> tuple[int, int]: ...
    def lease(self, mailbox: str, max_count: int, lease_until: float) -> list[Message]: ...
    def ack(self, mailbox: str, ids: Iterable[str]) -> list[str]: ...
    def release_expired(self, now: float) -> list[StoredMessage]: ...
    def next_lease_expiry(self) -> float | None: ...
    def move_mailbox(self, old: str, new: str) -> None: ...
    def mailbox_names(self) -> Iterable[str]: ...
    def expire_mail(self, mailbox: str, before_id: str) -> list[str]: ...

    # rename forwards
    def put_forward(self, old: str, new: str, until: float) -> None: ...
    def get_forward(self, name: str, now: float) -> str | None: ...
    def delete_forward(self, name: str) -> None: ...

    # idempotency keys
    def get_idempotent(self, sender: str, key: str, now: float) -> SendResult | None: ...
    def put_idempotent(self, sender: str, key: str, result: SendResult, until: float) -> None: ...

    def purge(self, now: float) -> None:
        """Drop expired sessions, forwards and idempotency keys."""
        ...


@runtime_checkable
class Journaled(Protocol):
    """A store whose mutations must be committed before responses that saw them are sent.

    Every mutation appends a journal op and raises ``written_seq``; the shell's committer
    takes the ops (:meth:`take_pending`), writes them with :meth:`apply_ops` in a worker
    thread, and then sets ``durable_seq``. A :class:`MemoryStore` is not journaled: the shell
    sends its responses at once.
    """

    written_seq: int
    durable_seq: int

    def take_pending(self) -> tuple[list[Any], int]: ...
    def requeue(self, ops: list[Any]) -> None: ...
    def apply_ops(self, ops: list[Any]) -> None: ...
    def checkpoint_due(self) -> bool: ...
    def checkpoint(self) -> None: ...

