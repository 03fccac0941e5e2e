"""One admitted peer: its reader, its writer, its outbox, and its state as one table.

A connection is always in one :class:`Phase`; every change goes through
:meth:`PeerLink.on` and the table :data:`parrot_ipc.shell.phase.TRANSITIONS` (as h11 keeps its state machine in one
table). Pushes held while a chunk's responses wait for their commit are decided in one place
(:meth:`PeerLink.push`) and released in one place (leaving :attr:`Phase.HOLDING`).

One task reads (:meth:`PeerLink.run`) and one writes; the core decides everything else. A
connection handles all the frames of a chunk it read, then waits until the store is durable up
to what they saw before it queues their responses, so no response (and no push) leaves before
the commit of the state it reports.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from ..core import Broker, BrokerConfig, FrameBuffer
from ..core import protocol as p
from ..core.batch import BatchReply, each_failed, is_batch
from ..core.broker import Connection, WaitForMail
from ..core.methods import answers_while_opening
from ..errors import ErrorCode, FrameTooLarge, SlowReader
from .commit import GroupCommit
from .phase import READING as _READING
from .phase import TRANSITIONS, LinkEvent, Phase

log = logging.getLogger("parrot_ipc.server")
_RECV_BYTES = 65536
_FLUSH_S = 5.0  # at most this long to write what is queued after the reading side ends
LINGER_S = 1.0
_LINGER_DRAIN_BYTES = 1 << 20




class LinkHost(Protocol):
    """What a connection needs from its server (:class:`parrot_ipc.shell.server.BrokerServer`)."""

    broker: Broker
    config: BrokerConfig
    group: GroupCommit | None

    @property
    def closing(self) -> bool:
        """True once the server is shutting down: stop reading after the current chunk."""
        ...

    @property
    def opened(self) -> bool:
        """True once the store is open; before, only ``answers_while_opening`` frames run."""
        ...

    async def wait_opened(self) -> bool:
        """Wait until the store's opening is over: True if open, False if it failed."""
        ...

    def apply_effects(self) -> None:
        """Carry out the effects the core queued (pushes, wake-ups, drops)."""
        ...

    async def wait_for_mail(self, conn: Connection, wait: WaitForMail) -> bytes:
        """Answer a long-poll ``receive``: wait for mail or its deadline; returns the response."""
        ...


class PeerLink:
    """The shell side of one admitted connection.

    Args:
        conn: the core's view of it (from ``Broker.accept``).
        host: the server.

    Attributes:
        conn: the core's connection.
        phase: where it is (:class:`Phase`); change it only with :meth:`on`.
        queued_bytes: bytes in the outbox and not yet written (bounded by ``max_pending_bytes``).
    """

    def __init__(self, conn: Connection, host: LinkHost) -> None:
        cfg = host.config
        self.conn = conn
        self.phase = Phase.HANDSHAKE
        self.queued_bytes = 0
        self._host = host
        self._outbox, self._recv = trio.open_memory_channel[bytes](cfg.max_pending_responses + cfg.push_window)
        self._held: list[bytes] | None = None  # pushes waiting while HOLDING (a list only while some are)
        self._read_scope: trio.CancelScope | None = None
        self._drained: trio.Event | None = None  # while queue() waits: set when under the bound
        self._full_scope: trio.CancelScope | None = None  # while queue() waits for a full outbox
        self._batched = 0  # responses beyond one per entry, of the batch replies in the outbox

    # ------------------------------------------------------------------ state
    def on(self, event: LinkEvent) -> None:
        """Apply ``event`` (:data:`TRANSITIONS`). Leaving HOLDING sends the held pushes (or,
        into DROPPED, discards them); DROP interrupts a pending read.

        Raises:
            RuntimeError: ``event`` is not allowed in the current phase (a bug in the shell).
        """
        old = self.phase
        new = TRANSITIONS.get((old, event))
        if new is None:
            raise RuntimeError(f"conn {self.conn.conn_id}: no transition from {old.value} on {event.value}")
        self.phase = new
        if old is Phase.HOLDING and new is not Phase.HOLDING and self._held is not None:
            held, self._held = self._held, None
            for frame in held:
                self.push(frame)
        if new is Phase.DROPPED and old in _READING and self._read_scope is not None:
            self._read_scope.cancel()  # interrupt the pending read
        if new is Phase.DROPPED and self._drained is not None:
            self._drained.set()  # a response waiting for room is discarded (see queue())
        if new is Phase.DROPPED and self._full_scope is not None:
            self._full_scope.cancel()  # likewise one waiting for a full outbox

    @property
    def dropped(self) -> bool:
        """True once the broker dropped the connection (:attr:`Phase.DROPPED`); it may become
        true across any await."""
        return self.phase is Phase.DROPPED

    def push(self, frame: bytes) -> None:
        """Send a pushed notification: held while HOLDING (never ahead of the response that
        caused it), discarded once DROPPED, else put in the outbox at once. A subscriber whose
        unsent output would pass ``max_pending_bytes`` is dropped (it does not read)."""
        if self.phase is Phase.DROPPED:
            return
        if self.phase is Phase.HOLDING:
            if self._held is None:
                self._held = [frame]
            else:
                self._held.append(frame)
            return
        try:
            if self.queued_bytes + len(frame) > self._host.config.max_pending_bytes:
                raise trio.WouldBlock
            self._outbox.send_nowait(frame)
            self.queued_bytes += len(frame)
        except trio.WouldBlock:
            log.warning("dropping subscriber conn %d: it does not read its notifications", self.conn.conn_id)
            self.on(LinkEvent.DROP)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def stop_reading(self) -> None:
        """Interrupt a pending read (on DROP or shutdown); a connection busy answering notices
        when it next reads."""
        if self.phase in _READING and self._read_scope is not None:
            self._read_scope.cancel()

    # ------------------------------------------------------------------ I/O
    async def run(self, stream: trio.abc.Stream) -> bool:
        """Serve the connection until EOF, a timeout, a drop or shutdown.

        Returns True if the broker chose to close it (the peer is owed a linger so it can read
        our last frame). Raises :class:`SlowReader` if the peer reads nothing for
        ``idle_timeout_s`` while its output is over the bound.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, stream, nursery.cancel_scope)
                try:
                    broker_closed = await self._reader(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # The peer reset the connection (ECONNRESET): as EOF. Raised out of this
                    # nursery it would be an ExceptionGroup that no caller catches, and the
                    # whole broker would stop (tests/e2e/test_peer_reset.py).
                    broker_closed = False
                finally:
                    self._outbox.close()  # the writer drains what is queued, then exits
                if self.phase is Phase.DROPPED:
                    nursery.cancel_scope.cancel()  # a peer we drop gets no more of its output
                else:  # a peer that stopped reading must not hold the connection open
                    nursery.cancel_scope.deadline = trio.current_time() + _FLUSH_S
        finally:
            self._host.broker.close(self.conn)
        return broker_closed

    async def queue(self, frame: bytes) -> None:
        """Put a response in the outbox; wait while unsent output is over ``max_pending_bytes``
        (so the reader stops reading: backpressure). A connection dropped meanwhile (DROP)
        stops waiting at once and the response is discarded.

        Raises:
            SlowReader: the peer read nothing for ``idle_timeout_s`` meanwhile.
        """
        cfg = self._host.config
        if self.dropped:
            return
        if self.queued_bytes >= cfg.max_pending_bytes or frame.__class__ is BatchReply:
            with trio.move_on_after(cfg.idle_timeout_s):
                while self._full(frame) and not self.dropped:
                    ev = self._drained = trio.Event()
                    await ev.wait()
            if self.dropped:
                return  # the broker dropped it meanwhile: nothing more is sent
            if self._full(frame):
                raise SlowReader(f"conn {self.conn.conn_id} left {self.queued_bytes} bytes unread "
                                 f"for {cfg.idle_timeout_s:g} s")
        self.queued_bytes += len(frame)
        if isinstance(frame, BatchReply):
            self._batched += frame.responses - 1
        try:
            self._outbox.send_nowait(frame)
        except trio.WouldBlock:  # the outbox is full: wait for room, unless the broker drops us
            with trio.CancelScope() as self._full_scope:
                await self._outbox.send(frame)
            self._full_scope = None
            return
        await trio.lowlevel.checkpoint()  # as the await of send() would: others get their turn

    def _full(self, frame: bytes) -> bool:
        """True while ``frame`` must wait: unsent output is at ``max_pending_bytes``, or, for a
        batch's reply, its responses would take the queue past ``max_pending_responses`` (a
        batch counts like its members; one that is larger waits for an empty queue)."""
        cfg = self._host.config
        if self.queued_bytes >= cfg.max_pending_bytes:
            return True
        if not isinstance(frame, BatchReply):
            return False
        used = self._outbox.statistics().current_buffer_used + self._batched
        return used > 0 and used + frame.responses > cfg.max_pending_responses

    async def _writer(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        bound = self._host.config.max_pending_bytes
        recv = self._recv
        try:
            async with recv:
                async for frame in recv:
                    batch = [frame]
                    while True:  # coalesce whatever else is queued into one write
                        try:
                            batch.append(recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    if self._batched:  # batch replies count as their responses until taken
                        self._batched -= sum(f.responses - 1 for f in batch if isinstance(f, BatchReply))
                    data = b"".join(batch) if len(batch) > 1 else frame
                    await stream.send_all(data)
                    self.queued_bytes -= len(data)
                    ev = self._drained
                    if ev is not None and self.queued_bytes < bound:
                        self._drained = None
                        ev.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # the peer is gone: stop reading too

    async def _reader(self, stream: trio.abc.Stream) -> bool:
        """Read and answer frames until EOF or a timeout (False) or a broker-side close (True).

        EOF ends a last unterminated frame, which is answered. A timeout with part of a frame
        buffered writes one -32600 ``frame_not_terminated`` line and counts as a broker-side
        close (so the peer gets a linger and reads that line); one with nothing buffered is silent.

        One cancel scope serves the whole connection; its deadline is the handshake or idle
        deadline. Two scopes per read cost a slowloris burst of 1,000 one-byte reads about
        twice the CPU (benchmarks/hostile.py). The scope is cancelled from outside only while
        the phase is HANDSHAKE or IDLE, and handling runs with no deadline, so a request being
        answered is never cut short.
        """
        host, cfg = self._host, self._host.config
        framer = FrameBuffer(cfg.max_frame_bytes)
        inf = float("inf")
        # The first complete frame must arrive within handshake_timeout_s of accept, however
        # the bytes trickle in (slowloris); after that, any read resets idle_timeout_s.
        with trio.CancelScope(deadline=trio.current_time() + cfg.handshake_timeout_s) as scope:
            self._read_scope = scope
            while not (host.closing or self.phase is Phase.DROPPED):
                data = await stream.receive_some(_RECV_BYTES)
                if scope.cancel_called:  # a Drop, shutdown or the deadline came with the data
                    break
                if not data:  # EOF ends a last frame as "\n" would: answer it, then close
                    last = framer.take_tail()
                    if last is not None:
                        scope.deadline = inf
                        await self._handle_frames([last])
                        self.on(LinkEvent.READ)
                    return False
                try:
                    frames = framer.feed(bytes(data))  # no copy for bytes
                except FrameTooLarge as exc:
                    scope.deadline = inf
                    self.on(LinkEvent.ANSWER)
                    await self.queue(host.broker.frame_too_large(self.conn, int(exc.args[0])))
                    return True
                if frames:
                    scope.deadline = inf
                    await self._handle_frames(frames)
                    self.on(LinkEvent.READ)
                    scope.deadline = inf if self.conn.subscribed else trio.current_time() + cfg.idle_timeout_s
        if self.phase is Phase.DROPPED or host.closing:
            return True
        # The deadline passed while reading. A peer that sent nothing is owed nothing (no linger);
        # one with a frame buffered is told that it lacks its "\n" (a peer that forgot it waits).
        kind, timeout_s = (("handshake_timeout", cfg.handshake_timeout_s) if self.phase is Phase.HANDSHAKE
                           else ("idle_timeout", cfg.idle_timeout_s))
        c = self.conn
        buffered = framer.buffered_bytes
        host.broker.audit(kind, {"conn": c.conn_id, "uid": c.peer.uid, "pid": c.peer.pid, "timeout_s": timeout_s,
                                 "buffered_bytes": buffered})
        if not buffered:
            return False
        self.on(LinkEvent.ANSWER)
        await self.queue(not_terminated(kind, timeout_s))
        return True

    async def _handle_frames(self, frames: list[bytes]) -> None:
        """Answer the frames of one chunk. With a memory store each response is queued as it is
        made; with a journaled one the chunk's responses leave together after the commit they
        need (pushes to this peer are held meanwhile)."""
        host, conn, group = self._host, self.conn, self._host.group
        # Frames other than ping/get_token are held until the store is open (issue 14); if it
        # failed to open, the broker is stopping: they are not answered, the connection closes.
        if not host.opened and not all(map(answers_while_opening, frames)) and not await host.wait_opened():
            self.on(LinkEvent.DROP)
            return
        pending: list[tuple[bytes, bytes]] = []  # (request frame, response frame), journaled only
        since = 0 if group is None else group.written_seq
        self.on(LinkEvent.ANSWER if group is None else LinkEvent.HOLD)
        for frame in frames:
            if self.phase is Phase.DROPPED:
                break  # the rest of the chunk is not answered
            out = host.broker.handle_frame(conn, frame)
            if isinstance(out, WaitForMail):
                out, since = await self._long_poll(out, group, pending, since)
            if out is not None:
                if group is None:
                    await self.queue(out)
                else:
                    pending.append((frame, out))
            host.apply_effects()
        if group is not None:
            await self._flush(group, pending, since)
            self.on(LinkEvent.RELEASE)
            group.kick()

    async def _long_poll(self, wait: WaitForMail, group: GroupCommit | None,
                         pending: list[tuple[bytes, bytes]], since: int) -> tuple[bytes | None, int]:
        """Wait for mail (up to ``wait.wait_s`` seconds); with a journaled store the responses
        made so far go first, and pushes flow while waiting. Returns the response and the new
        ``since`` seq."""
        if group is not None:
            since = await self._flush(group, pending, since)  # earlier responses go first
            self.on(LinkEvent.RELEASE)
        out = await self._host.wait_for_mail(self.conn, wait)
        if group is not None:
            self.on(LinkEvent.HOLD)
        return out, since

    async def _flush(self, group: GroupCommit, pending: list[tuple[bytes, bytes]], since_seq: int) -> int:
        """Queue the responses of a chunk, once the store is durable up to what they saw.

        ``since_seq`` is ``written_seq`` before these requests ran. If they wrote (the seq
        moved) and the commit fails, they are answered -32603 ``store_write_failed``; requests
        that only read are answered as they are. Returns ``written_seq`` now.
        """
        upto = group.written_seq
        if group.dirty() and not await group.durable(upto) and upto > since_seq:
            pending[:] = [(frame, store_failed(frame)) for frame, _ in pending]
        if pending:  # one outbox entry (and one send_all) for the whole chunk's responses
            await self.queue(pending[0][1] if len(pending) == 1 else b"".join([o for _, o in pending]))
        pending.clear()
        return group.written_seq


def store_failed(request: bytes) -> bytes:
    """The -32603 ``store_write_failed`` error response for ``request`` (its id salvaged; for a
    batch, an array of them, one per member owed a response)."""
    message = "Internal error: the store could not be written; retry the request."
    if request[:1] != b"{" and is_batch(request):
        return each_failed(request, ErrorCode.INTERNAL_ERROR, message, {"reason": "store_write_failed"})
    return p.encode_error(p.salvage_id(request), ErrorCode.INTERNAL_ERROR, message, {"reason": "store_write_failed"})


def not_terminated(kind: str, timeout_s: float) -> bytes:
    """The -32600 ``frame_not_terminated`` line sent before closing a connection whose
    ``kind`` timeout (``handshake_timeout`` or ``idle_timeout``, ``timeout_s`` seconds) passed
    with part of a frame buffered: NDJSON needs a ``\n`` after every request."""
    return p.encode_error(None, ErrorCode.INVALID_REQUEST,
                          f"Invalid request: no complete frame within {timeout_s:g} s ({kind}_s); every "
                          "request must end with a newline (\\n). Closing the connection.",
                          {"reason": "frame_not_terminated"})


async def linger_close(stream: trio.abc.Stream) -> None:
    """Half-close, then discard (unparsed) what the peer still sends, briefly, before close.

    Closing an AF_UNIX socket that has unread input makes the peer's next read fail with
    ECONNRESET (net/unix/af_unix.c, unix_release_sock), which can hide our last frame from
    it. Draining first lets the peer read that frame and then a clean EOF. Bounded by
    ``LINGER_S`` seconds and 1 MiB.
    """
    with trio.move_on_after(LINGER_S):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            drained = 0
            while drained < _LINGER_DRAIN_BYTES:
                data = await stream.receive_some(65536)
                if not data:
                    break
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
