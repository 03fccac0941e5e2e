"""The journal's one owner: commit bookkeeping for group commit, synchronous and sans-trio.

A :class:`~parrot_ipc.store.base.Journaled` store appends one op per mutation and raises its
``written_seq``. :class:`Committer` is the only object that knows how far the journal is
durable (:attr:`Committer.durable_seq`) and how commits went (:attr:`Committer.failures`,
:attr:`Committer.failed_through`, :attr:`Committer.healthy`). It never awaits: the shell
(``parrot_ipc.shell.commit``) decides where a commit runs (on the event loop or in a worker
thread) and calls :meth:`Committer.take`, the store's ``apply_ops`` and then
:meth:`Committer.done` or :meth:`Committer.failed`.

Every op is idempotent (an upsert or a delete by key), so a failed batch is put back in front
of the journal (:meth:`Committer.failed`) and written again by the next commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import Journaled

log = logging.getLogger("parrot_ipc.store")


@dataclass(frozen=True, slots=True)
class Batch:
    """Journal ops taken for one commit.

    Attributes:
        ops: the ops, opaque here (the store's own op values), oldest first.
        seq: the journal seq the store is durable up to once they are written.
    """

    ops: list[Any]
    seq: int


class Committer:
    """Owns ``durable_seq`` and the commit bookkeeping of one journaled store.

    Args:
        journal: the store; ``durable_seq`` starts at its ``written_seq`` (what it loaded
            from disk is durable).
        keep_lease: for a failed batch, the message ids whose lease stands (pushes waiting
            for a later commit); every other lease of the batch is rolled back (issue 14).

    Attributes:
        journal: the store.
        durable_seq: every op up to this journal seq is committed.
        failures: how many commits failed so far (a counter; compare two readings).
        failed_through: the highest seq a failed commit covered (0: none failed).
        healthy: the last commit succeeded.
    """

    def __init__(self, journal: Journaled, keep_lease: Callable[[str], bool] | None = None) -> None:
        self.journal = journal
        self.keep_lease = keep_lease
        self.durable_seq: int = journal.written_seq
        self.failures = 0
        self.failed_through = 0
        self.healthy = True

    @property
    def backlog(self) -> int:
        """Journal ops written and not yet committed (``written_seq - durable_seq``), >= 0."""
        return max(0, self.journal.written_seq - self.durable_seq)

    def is_durable(self, seq: int) -> bool:
        """True once every op up to journal seq ``seq`` is committed."""
        return self.durable_seq >= seq

    def failed_since(self, failures_before: int, seq: int) -> bool:
        """True if a commit attempted after :attr:`failures` read ``failures_before`` covered
        ``seq`` and failed (the requests that wrote up to ``seq`` are answered -32603)."""
        return self.failures > failures_before and self.failed_through >= seq

    def take(self) -> Batch:
        """Take every pending op from the journal for one commit (``journal.take_pending()``)."""
        ops, seq = self.journal.take_pending()
        return Batch(ops, seq)

    def write(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction (``journal.apply_ops``); safe in a worker thread.

        Raises:
            Exception: whatever the store raises (``sqlite3.Error``, ``OSError``); the caller
                then calls :meth:`failed`.
        """
        self.journal.apply_ops(batch.ops)

    def done(self, batch: Batch) -> None:
        """Record that ``batch`` was written: ``durable_seq`` moves up to its seq."""
        self.durable_seq = max(self.durable_seq, batch.seq)
        if not self.healthy:
            log.warning("store writes succeed again (up to seq %d)", batch.seq)
        self.healthy = True

    def failed(self, batch: Batch) -> None:
        """Record that writing ``batch`` failed: log it (with its traceback once per stretch of
        failures, then one debug line each: a full disk must not fill the log too), put its ops
        back (``journal.requeue``, which rolls back their leases but ``keep_lease``'s) so the
        next commit writes them again, and count the failure."""
        if self.healthy:
            log.exception("store write failed (%d op(s) up to seq %d): answering -32603, will retry",
                          len(batch.ops), batch.seq)
        else:
            log.debug("store write failed again (%d op(s) up to seq %d)", len(batch.ops), batch.seq)
        self.journal.requeue(batch.ops, self.keep_lease)
        self.failed_through = batch.seq
        self.failures += 1
        self.healthy = False

    def commit(self) -> bool:
        """Take, write and record every pending op here, synchronously. False if it failed
        (already logged and requeued by :meth:`failed`)."""
        batch = self.take()
        try:
            self.write(batch)
        except Exception:
            self.failed(batch)
            return False
        self.done(batch)
        return True

    def checkpoint_due(self) -> bool:
        """The store wants a WAL checkpoint (https://sqlite.org/wal.html#ckpt)."""
        return self.journal.checkpoint_due()

    def checkpoint(self) -> None:
        """Checkpoint the WAL; it may fsync, so call it in a worker thread only.

        Raises:
            Exception: whatever the store raises (``sqlite3.Error``); the caller logs it.
        """
        self.journal.checkpoint()
