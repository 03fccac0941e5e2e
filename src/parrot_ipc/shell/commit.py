"""The trio side of group commit: one committer task, small commits inline, waits for durability.

The bookkeeping (``durable_seq``, failures) is the :class:`~parrot_ipc.store.committer.Committer`'s;
this module decides where and when a commit runs:

- a connection that needs its state durable calls ``await group.durable(seq)``;
- with durability ``"normal"`` (``synchronous=NORMAL``: a commit does not fsync), a batch of at
  most :data:`INLINE_COMMIT_OPS` ops is committed right on the event loop by the first
  connection back after one yield, so the requests other connections have ready join it;
- bigger batches, every ``"fsync"`` commit, and every WAL checkpoint run in a worker thread
  (``trio.to_thread``), so the loop never waits on an fsync (https://sqlite.org/wal.html#ckpt);
- a failed commit is retried by the committer task with a backoff (50 ms doubling to 1 s), cut
  short by any request that waits for a commit meanwhile: that request gets its answer (its
  -32603 on a full disk, issue 14) after one attempt, not after the backoff, and the first
  attempt after space returns succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import trio

from ..store.committer import Batch, Committer

log = logging.getLogger("parrot_ipc.server")

#: Batches of at most this many journal ops are committed on the event loop (durability
#: "normal" only); bigger ones, and every "fsync" commit, go to the worker thread.
INLINE_COMMIT_OPS = 64
_MAX_BACKOFF_S = 1.0
_FIRST_BACKOFF_S = 0.05


class GroupCommit:
    """Run group commit for one journaled store inside trio.

    Args:
        committer: the bookkeeping (the only owner of ``durable_seq``).
        durability: ``"normal"`` (small batches may commit inline) or ``"fsync"`` (never inline).
        on_commit: called (on the event loop) after every commit attempt, success or failure,
            e.g. to send pushes whose state is now durable.

    Run :meth:`run` in a nursery; cancel it to stop (what is still pending is written by the
    store's ``close()``).
    """

    def __init__(self, committer: Committer, durability: Literal["normal", "fsync"],
                 on_commit: Callable[[], None] | None = None) -> None:
        self.committer = committer
        self._on_commit = on_commit
        self._inline_ops = INLINE_COMMIT_OPS if durability == "normal" else 0
        self._kick = trio.Event()
        self._retry = trio.Event()  # set by a request waiting while commits fail: retry now
        self._done = trio.Event()
        self._in_thread = False  # a commit or checkpoint runs in the worker thread

    @property
    def written_seq(self) -> int:
        """The journal's ``written_seq``: the seq of the newest op (committed or not)."""
        return self.committer.journal.written_seq

    def dirty(self) -> bool:
        """True while some journal op is not committed yet."""
        return self.committer.backlog > 0

    def kick(self) -> None:
        """Tell the committer task there may be ops to write (a no-op when none are pending)."""
        if self.dirty():
            self._kick.set()

    async def durable(self, seq: int) -> bool:
        """Wait until the store is durable up to journal seq ``seq``.

        Returns False if a commit attempt made after the call began, and covering ``seq``,
        failed (the caller answers -32603 ``store_write_failed``); True once durable.
        """
        c = self.committer
        failures = c.failures
        if self._can_inline():
            # Yield once, so the requests other connections have ready now are handled and join
            # this commit; then, if the batch is still small, commit it right here.
            await trio.lowlevel.checkpoint()
            if c.failed_since(failures, seq):
                return False
            if c.is_durable(seq):
                return True
            if self._can_inline() and c.backlog <= self._inline_ops:
                return self._commit_inline()
        self._kick.set()
        while not c.is_durable(seq):
            if c.failed_since(failures, seq):
                return False
            if not c.healthy:
                self._retry.set()  # one attempt now, not after the backoff (issue 14)
            await self._done.wait()
        return True

    async def run(self) -> None:
        """The committer task: commit ALL pending ops per round, then wake the waiters.

        Never returns; cancel it. A failed commit is retried after a backoff, or as soon as a
        request waits for a commit (:meth:`durable`).
        """
        c = self.committer
        backoff = 0.0
        while True:
            while not self.dirty() and not c.checkpoint_due():
                ev = self._kick = trio.Event()
                await ev.wait()
            self._retry = trio.Event()  # a request waiting from now on cuts the backoff short
            if not self.dirty():  # only a checkpoint is due (after inline commits)
                ok = True
            elif c.backlog <= self._inline_ops:
                ok = self._commit_inline()
            else:
                ok = await self._commit_in_thread()
            if ok:
                backoff = 0.0
                if c.checkpoint_due():
                    await self._checkpoint()
            else:
                backoff = min(_MAX_BACKOFF_S, backoff * 2 or _FIRST_BACKOFF_S)
                with trio.move_on_after(backoff):
                    await self._retry.wait()

    def _can_inline(self) -> bool:
        return bool(self._inline_ops) and self.committer.healthy and not self._in_thread

    def _commit_inline(self) -> bool:
        """Commit every pending op synchronously, on the event loop. False if it failed."""
        ok = self.committer.commit()
        self._finished()
        if ok and self.committer.checkpoint_due():
            self._kick.set()  # the committer task checkpoints in its thread
        return ok

    async def _commit_in_thread(self) -> bool:
        c = self.committer
        batch: Batch = c.take()
        self._in_thread = True
        try:
            await trio.to_thread.run_sync(c.write, batch)
        except Exception:
            c.failed(batch)
            return False
        else:
            c.done(batch)
            return True
        finally:
            self._in_thread = False
            self._finished()

    async def _checkpoint(self) -> None:
        """Checkpoint the WAL in the worker thread. Meanwhile no commit runs on the event loop:
        requests that need one wait for the committer, so the loop never waits on an fsync."""
        self._in_thread = True
        try:
            await trio.to_thread.run_sync(self.committer.checkpoint)
        except Exception:
            log.exception("WAL checkpoint failed; retrying after the next commits")
        finally:
            self._in_thread = False

    def _finished(self) -> None:
        ev, self._done = self._done, trio.Event()
        ev.set()
        if self._on_commit is not None:
            self._on_commit()
