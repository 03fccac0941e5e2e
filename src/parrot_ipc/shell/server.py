"""The trio shell: accepts connections, pins peer credentials, runs the core, writes frames.

The only module that awaits. One task reads each connection and one writes it; the core
(:class:`parrot_ipc.core.Broker`) decides everything. Shutdown (SIGTERM/SIGINT) stops
accepting, unlinks the socket, lets responses in flight be written, then closes.

With a durable (journaled) store, one committer task owns the writes (group commit): it takes
every pending journal op, writes them in one transaction in a worker thread, and wakes the
connections waiting for it. A connection handles all the frames of a chunk it read, then waits
until the store is durable up to what it saw before it queues the responses, so no response
(and no pushed message) leaves before the commit of the state it reports.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket as stdsocket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import trio

from .. import errors
from ..app.config_file import LoadedConfig, load_config
from ..core import Broker, BrokerConfig, Drop, FrameBuffer, PeerCredentials, Push, Wake
from ..core import protocol as p
from ..core.broker import Connection, WaitForMail
from ..core.policy import Policy
from ..core.timefmt import rfc3339
from ..errors import ConfigError, ErrorCode, FrameTooLarge, SlowReader
from ..os import limits as os_limits
from ..os import paths as os_paths
from ..os import peer as os_peer
from ..os import systemd
from ..os.resources import ResourceDir
from ..store import Journaled, MemoryStore, Store

log = logging.getLogger("parrot_ipc.server")
_RECV_BYTES = 65536
_LINGER_S = 1.0
_FLUSH_S = 5.0  # at most this long to write what is queued after the reading side ends
_LINGER_DRAIN_BYTES = 1 << 20
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: Batches of at most this many journal ops are committed on the event loop (durability
#: "normal" only); bigger ones, and every "fsync" commit, go to the worker thread.
_INLINE_COMMIT_OPS = 64


@dataclass(eq=False, slots=True)
class _Link:
    """Shell-side state of one connection: its outbox and the scope its reads run in."""

    conn: Connection
    outbox: trio.MemorySendChannel[bytes]
    read_scope: trio.CancelScope | None = None  # the scope of the whole read loop, once it runs
    reading: bool = False  # awaiting a read: only then may read_scope be cancelled
    dropped: bool = False  # the broker decided to close this connection
    busy: bool = False  # answering a chunk: pushes to it wait until its responses are queued
    held: list[bytes] | None = None  # those pushes (a list only while there are some)
    queued_bytes: int = 0  # bytes in the outbox and not yet written
    drained: trio.Event | None = None  # while _queue waits: set when queued_bytes falls under the bound

    def stop_reading(self) -> None:
        """Interrupt a pending read (after setting ``dropped`` or the server's ``_closing``);
        a connection busy answering notices the flag when it next reads."""
        if self.reading and self.read_scope is not None:
            self.read_scope.cancel()


class BrokerServer:
    """Serve a :class:`Broker` on a listening AF_UNIX socket.

    Args:
        broker: the core.
        listener: a bound, listening, non-blocking stdlib AF_UNIX stream socket.
        read_peer: reads and attests a connected socket's peer (the OS layer's
            :func:`parrot_ipc.os_peer.identify_peer`; injectable for tests).
        commit_mode: with a journaled store, ``"group"`` (the default: one committer task,
            concurrent requests share commits) or ``"per_request"`` (a benchmark baseline:
            requests are handled one chunk at a time, each with its own commit; a long-poll
            ``receive`` holds up every other connection while it waits, so never in production).

    Use :meth:`serve` inside a nursery (``await nursery.start(server.serve)``) and
    :meth:`shutdown` to stop it.
    """

    def __init__(
        self,
        broker: Broker,
        listener: stdsocket.socket,
        *,
        read_peer: Callable[[stdsocket.socket], PeerCredentials] = os_peer.identify_peer,
        on_listener_closed: Callable[[], None] | None = None,
        commit_mode: Literal["group", "per_request"] = "group",
    ) -> None:
        self.broker = broker
        self.config: BrokerConfig = broker.config
        self._listener = trio.socket.from_stdlib_socket(listener)
        self._read_peer = read_peer
        self._on_listener_closed = on_listener_closed
        self._links: dict[Connection, _Link] = {}
        self._sockets = 0  # accepted sockets still open (max_connections)
        self._last_full_warning = 0.0
        self._waiters: dict[str, trio.Event] = {}
        self._closing = False
        self._shutdown = trio.Event()
        self._ticker_wakeup = trio.Event()
        store = broker.store
        self._journal: Journaled | None = store if isinstance(store, Journaled) else None
        self._commit_kick = trio.Event()
        self._commit_done = trio.Event()
        self._failed_through = 0  # the highest seq whose commit failed
        self._failures = 0  # failed commits so far
        self._deferred: list[tuple[int, Push]] = []  # pushes waiting for their commit
        self._per_request_lock = trio.Lock() if commit_mode == "per_request" else None
        self._full_frame = p.encode_error(
            None, ErrorCode.RATE_LIMITED,
            f"The broker is at max_connections ({self.config.max_connections}); retry later.",
            {"reason": "server_full", "retry_after_s": 1.0})
        self._committing = False  # the committer has a batch in its worker thread
        self._healthy = True  # the last commit succeeded (else only the committer retries, with backoff)
        # Group commit sized to load: with synchronous=NORMAL a commit does not fsync, so a small
        # batch is cheaper to write right here, on the event loop, than to hand to a thread.
        self._inline_ops = _INLINE_COMMIT_OPS if broker.config.durability == "normal" else 0

    # ------------------------------------------------------------------ lifecycle
    def reload_policy(self, policy: Policy, label: str = "") -> None:
        """Apply a reloaded admission policy to the broker and every live connection."""
        self.broker.replace_policy(policy, label)
        self._apply_effects()

    def shutdown(self) -> None:
        """Begin a clean shutdown: stop accepting, finish responses in flight, close."""
        self._shutdown.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until :meth:`shutdown`; then drain for up to ``shutdown_grace_s``."""
        async with trio.open_nursery() as committing:
            if self._journal is not None and self._per_request_lock is None:
                committing.start_soon(self._committer, self._journal)
            async with trio.open_nursery() as conns:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(self._accept_loop, conns)
                    accepting.start_soon(self._ticker)
                    task_status.started()
                    await self._shutdown.wait()
                    accepting.cancel_scope.cancel()
                self._listener.close()
                if self._on_listener_closed is not None:
                    self._on_listener_closed()
                self._closing = True
                log.info("shutting down: %d connection(s) to finish", len(self._links))
                for link in list(self._links.values()):
                    link.stop_reading()
                for ev in self._waiters.values():
                    ev.set()
                conns.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace_s
            committing.cancel_scope.cancel()  # what is still pending is written by the store's close()

    async def _accept_loop(self, conns: trio.Nursery) -> None:
        while True:
            try:
                sock, _ = await self._listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    log.warning("accept failed (%s); retrying in 100 ms", os.strerror(exc.errno or 0))
                    await trio.sleep(0.1)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            if self._sockets >= self.config.max_connections:
                now = time.monotonic()
                if now - self._last_full_warning > 1.0:
                    self._last_full_warning = now
                    log.warning("max_connections (%d) reached: refusing new connections at once",
                                self.config.max_connections)
                with contextlib.suppress(OSError):  # one line into an empty, non-blocking socket
                    os.write(sock.fileno(), self._full_frame)
                sock.close()
                continue
            self._sockets += 1
            conns.start_soon(self._serve_connection, sock)

    async def _ticker(self) -> None:
        """Run the core's time-driven work (lease expiry, purges) when it is due."""
        broker = self.broker
        while True:
            delay = max(0.0, min(1.0, broker.next_deadline() - time.time()))
            await trio.sleep(delay)
            broker.tick()
            self._apply_effects()
            self._kick()

    # ------------------------------------------------------------------ group commit
    def _kick(self) -> None:
        """Tell the committer there may be ops to write (a no-op for a memory store)."""
        j = self._journal
        if j is not None and j.written_seq > j.durable_seq:
            self._commit_kick.set()

    async def _committer(self, j: Journaled) -> None:
        """Own the store's writes: commit ALL pending ops per round, then wake the waiters.

        A failed commit is logged, its waiters get False (their requests are answered
        -32603, reason ``store_write_failed``), and its ops are put back and retried with a
        backoff (every op is idempotent), so the broker keeps serving.
        """
        backoff = 0.0
        while True:
            while j.written_seq <= j.durable_seq and not j.checkpoint_due():
                ev = self._commit_kick = trio.Event()
                await ev.wait()
            if j.written_seq <= j.durable_seq:  # only a checkpoint is due (after inline commits)
                ok = True
            elif j.written_seq - j.durable_seq <= self._inline_ops:
                ok = self._commit_here(j)
            else:
                ops, seq = j.take_pending()
                self._committing = True
                try:
                    await trio.to_thread.run_sync(j.apply_ops, ops)
                except Exception:
                    ok = False
                    self._commit_failed(j, ops, seq)
                else:
                    ok = True
                    j.durable_seq = max(j.durable_seq, seq)
                    self._healthy = True
                    self._commit_finished(j)
                finally:
                    self._committing = False
            if ok:
                backoff = 0.0
                if j.checkpoint_due():
                    await self._checkpoint(j)
            else:
                backoff = min(1.0, backoff * 2 or 0.05)
                await trio.sleep(backoff)

    async def _checkpoint(self, j: Journaled) -> None:
        """Checkpoint the WAL in the worker thread. Meanwhile no commit runs on the event loop:
        requests that need one wait for the committer, so the loop never waits on an fsync."""
        self._committing = True
        try:
            await trio.to_thread.run_sync(j.checkpoint)
        except Exception:
            log.exception("WAL checkpoint failed; retrying after the next commits")
        finally:
            self._committing = False

    def _commit_here(self, j: Journaled) -> bool:
        """Commit every pending op synchronously, on the event loop (a small batch). False if it failed."""
        ops, seq = j.take_pending()
        try:
            j.apply_ops(ops)
        except Exception:
            self._commit_failed(j, ops, seq)
            return False
        j.durable_seq = max(j.durable_seq, seq)
        self._healthy = True
        self._commit_finished(j)
        if j.checkpoint_due():
            self._commit_kick.set()  # the committer checkpoints in its thread
        return True

    def _commit_failed(self, j: Journaled, ops: list[Any], seq: int) -> None:
        log.exception("store write failed (%d op(s) up to seq %d): answering -32603, will retry", len(ops), seq)
        j.requeue(ops)
        self._failed_through = seq
        self._failures += 1
        self._healthy = False
        self._commit_finished(j)

    def _commit_finished(self, j: Journaled) -> None:
        ev, self._commit_done = self._commit_done, trio.Event()
        ev.set()
        if self._deferred:
            durable = j.durable_seq
            ready = [eff for seq, eff in self._deferred if seq <= durable]
            if ready:
                self._deferred = [(seq, eff) for seq, eff in self._deferred if seq > durable]
                for eff in ready:
                    self._push_now(eff)

    async def _await_durable(self, j: Journaled, seq: int) -> bool:
        """Wait until the store is durable up to ``seq``. False if a commit attempt made after
        the call began, and covering ``seq``, failed."""
        if self._per_request_lock is not None:  # benchmark baseline: commit right here, alone
            ops, upto = j.take_pending()
            try:
                await trio.to_thread.run_sync(j.apply_ops, ops)
            except Exception:
                log.exception("store write failed (%d op(s) up to seq %d)", len(ops), upto)
                j.requeue(ops)
                return False
            j.durable_seq = max(j.durable_seq, upto)
            self._commit_finished(j)
            return True
        failures = self._failures
        if self._inline_ops and self._healthy and not self._committing:
            # Group commit sized to load. Yield once, so the requests other connections have
            # ready now are handled and join this commit; then, if the batch is small, the first
            # connection back commits it right here (no hand-off to the committer or a thread).
            await trio.lowlevel.checkpoint()
            if self._failures > failures and self._failed_through >= seq:
                return False
            if j.durable_seq >= seq:
                return True
            if self._healthy and not self._committing and j.written_seq - j.durable_seq <= self._inline_ops:
                return self._commit_here(j)
        self._commit_kick.set()
        while j.durable_seq < seq:
            if self._failures > failures and self._failed_through >= seq:
                return False
            ev = self._commit_done
            await ev.wait()
        return True

    async def _flush(self, link: _Link, pending: list[tuple[bytes, bytes]], since_seq: int) -> int:
        """Queue the responses of a chunk, once the store is durable up to what they saw.

        ``since_seq`` is ``written_seq`` before these requests ran. If they wrote (the seq
        moved) and the commit fails, they are answered -32603 ``store_write_failed``; requests
        that only read are answered as they are (the state they saw stays in the mirror and
        its writes are retried). Returns ``written_seq`` now.
        """
        j = self._journal
        assert j is not None
        upto = j.written_seq
        if (upto > j.durable_seq and not await self._await_durable(j, upto)
                and upto > since_seq):
            pending[:] = [(frame, _store_failed(frame)) for frame, _ in pending]
        if pending:  # one outbox entry (and one send_all) for the whole chunk's responses
            await self._queue(link, pending[0][1] if len(pending) == 1 else b"".join([o for _, o in pending]))
        pending.clear()
        return j.written_seq

    # ------------------------------------------------------------------ one connection
    async def _serve_connection(self, sock: trio.socket.SocketType) -> None:
        stream = trio.SocketStream(sock)
        try:
            # Credentials first, before any byte is read (docs/protocol.md, Connection life).
            try:
                peer = self._read_peer(sock)  # type: ignore[arg-type]
            except OSError as exc:
                log.warning("cannot read peer credentials (%s); closing", exc)
                return
            admitted = self.broker.accept(peer)
            if isinstance(admitted, bytes):
                with trio.move_on_after(_LINGER_S):
                    await stream.send_all(admitted)
                await _linger_close(stream)
                return
            if await self._run_link(admitted, stream):
                await _linger_close(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except SlowReader as exc:
            log.warning("closing a connection: %s", exc)
        finally:
            self._sockets -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _run_link(self, conn: Connection, stream: trio.SocketStream) -> bool:
        """Serve an admitted connection. True if the broker chose to close it (not the peer)."""
        cfg = self.config
        send, recv = trio.open_memory_channel[bytes](cfg.max_pending_responses + cfg.push_window)
        link = _Link(conn, send)
        self._links[conn] = link
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, link, stream, recv, nursery.cancel_scope)
                try:
                    broker_closed = await self._reader(link, stream)
                finally:
                    send.close()  # the writer drains what is queued, then exits
                if link.dropped:
                    nursery.cancel_scope.cancel()  # a peer we drop gets no more of its output
                else:  # a peer that stopped reading must not hold the connection open
                    nursery.cancel_scope.deadline = trio.current_time() + _FLUSH_S
        finally:
            del self._links[conn]
            self.broker.close(conn)
        return broker_closed

    async def _queue(self, link: _Link, frame: bytes) -> None:
        """Put a response in the outbox; wait while the connection's unsent output is over
        ``max_pending_bytes`` (so the reader stops reading: backpressure). A peer that reads
        nothing for ``idle_timeout_s`` meanwhile raises :class:`SlowReader`."""
        cfg = self.config
        if link.queued_bytes >= cfg.max_pending_bytes:
            with trio.move_on_after(cfg.idle_timeout_s):
                while link.queued_bytes >= cfg.max_pending_bytes:
                    ev = link.drained = trio.Event()
                    await ev.wait()
            if link.queued_bytes >= cfg.max_pending_bytes:
                raise SlowReader(f"conn {link.conn.conn_id} left {link.queued_bytes} bytes unread "
                                 f"for {cfg.idle_timeout_s:g} s")
        link.queued_bytes += len(frame)
        await link.outbox.send(frame)

    async def _writer(self, link: _Link, stream: trio.SocketStream, recv: trio.MemoryReceiveChannel[bytes],
                      scope: trio.CancelScope) -> None:
        bound = self.config.max_pending_bytes
        try:
            async with recv:
                async for frame in recv:
                    batch = [frame]
                    while True:  # coalesce whatever else is queued into one write
                        try:
                            batch.append(recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    data = b"".join(batch) if len(batch) > 1 else frame
                    await stream.send_all(data)
                    link.queued_bytes -= len(data)
                    ev = link.drained
                    if ev is not None and link.queued_bytes < bound:
                        link.drained = None
                        ev.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # the peer is gone: stop reading too

    async def _reader(self, link: _Link, stream: trio.SocketStream) -> bool:
        """Read and answer frames until EOF or a timeout (returns False) or a broker-side
        close (True: the peer is owed a linger so it can read our last frame).

        One cancel scope serves the whole connection; its deadline is the handshake or idle
        deadline. Two scopes per read cost a slowloris burst of 1,000 one-byte reads about
        twice the CPU (benchmarks/hostile.py). The scope is cancelled from outside (a Drop,
        shutdown) only while ``link.reading``, and handling runs with no deadline, so a
        request being answered is never cut short.
        """
        broker, cfg, conn = self.broker, self.config, link.conn
        framer = FrameBuffer(cfg.max_frame_bytes)
        # The first complete frame must arrive within handshake_timeout_s of accept, however
        # the bytes trickle in (slowloris); after that, any read resets idle_timeout_s.
        in_handshake = True
        inf = float("inf")
        with trio.CancelScope(deadline=trio.current_time() + cfg.handshake_timeout_s) as scope:
            link.read_scope = scope
            while not (self._closing or link.dropped):
                link.reading = True
                try:
                    data = await stream.receive_some(_RECV_BYTES)
                finally:
                    link.reading = False
                if scope.cancel_called:  # a Drop, shutdown or the deadline came with the data
                    break
                if not data:
                    return False
                try:
                    frames = framer.feed(data)
                except FrameTooLarge as exc:
                    scope.deadline = inf
                    await self._queue(link, broker.frame_too_large(conn, int(exc.args[0])))
                    return True
                if frames:
                    in_handshake = False
                    scope.deadline = inf
                    if self._per_request_lock is not None:
                        async with self._per_request_lock:
                            await self._handle_frames(link, frames)
                    else:
                        await self._handle_frames(link, frames)
                if not in_handshake:
                    scope.deadline = inf if conn.subscribed else trio.current_time() + cfg.idle_timeout_s
        if link.dropped or self._closing:
            return True
        # The deadline passed while reading: nothing is owed to the peer, so no linger.
        if in_handshake:
            self._audit_timeout(conn, "handshake_timeout", cfg.handshake_timeout_s)
        else:
            self._audit_timeout(conn, "idle_timeout", cfg.idle_timeout_s)
        return False

    async def _handle_frames(self, link: _Link, frames: list[bytes]) -> None:
        """Answer the frames of one chunk; their responses leave after the commit they need."""
        broker, conn, j = self.broker, link.conn, self._journal
        if j is None:  # memory store: each response is queued at once, as it is made
            for frame in frames:
                out = broker.handle_frame(conn, frame)
                if isinstance(out, WaitForMail):
                    out = await self._wait_for_mail(conn, out)
                if out is not None:
                    await self._queue(link, out)
                self._apply_effects()
            return
        pending: list[tuple[bytes, bytes]] = []  # (request frame, response frame)
        since = j.written_seq
        link.busy = True
        try:
            for frame in frames:
                out = broker.handle_frame(conn, frame)
                if isinstance(out, WaitForMail):
                    since = await self._flush(link, pending, since)  # earlier responses go first
                    link.busy = False
                    self._release_held(link)
                    out = await self._wait_for_mail(conn, out)
                    link.busy = True
                if out is not None:
                    pending.append((frame, out))
                self._apply_effects()
            await self._flush(link, pending, since)
        finally:
            link.busy = False
        self._release_held(link)
        self._kick()

    def _audit_timeout(self, conn: Connection, kind: str, timeout_s: float) -> None:
        self.broker.audit(kind, {"conn": conn.conn_id, "uid": conn.peer.uid, "pid": conn.peer.pid,
                                  "timeout_s": timeout_s})

    async def _wait_for_mail(self, conn: Connection, wait: WaitForMail) -> bytes:
        deadline = trio.current_time() + wait.wait_s
        while True:
            name = conn.instance_id
            if name is not None and not self._closing:
                ev = self._waiters.get(name)
                if ev is None:
                    ev = self._waiters[name] = trio.Event()
                with trio.move_on_at(deadline):
                    await ev.wait()
            final = self._closing or name is None or trio.current_time() >= deadline
            out = self.broker.poll_receive(conn, wait, final=final)
            if out is not None:
                return out

    # ------------------------------------------------------------------ effects
    def _apply_effects(self) -> None:
        for eff in self.broker.take_effects():
            if isinstance(eff, Push):
                self._push(eff)
            elif isinstance(eff, Wake):
                ev = self._waiters.pop(eff.instance_id, None)
                if ev is not None:
                    ev.set()
            elif isinstance(eff, Drop):
                link = self._links.get(eff.conn)
                if link is not None:
                    link.dropped = True
                    link.stop_reading()

    def _push(self, eff: Push) -> None:
        j = self._journal
        if j is not None and j.written_seq > j.durable_seq:
            self._deferred.append((j.written_seq, eff))  # its lease (and the message) first
            self._commit_kick.set()
            return
        self._push_now(eff)

    def _push_now(self, eff: Push) -> None:
        link = self._links.get(eff.conn)
        if link is None:
            return  # closed meanwhile: the lease runs out and the message is delivered again
        if link.busy:  # never ahead of the response that caused it
            if link.held is None:
                link.held = [eff.frame]
            else:
                link.held.append(eff.frame)
            return
        self._send_push(link, eff.frame)

    def _release_held(self, link: _Link) -> None:
        held, link.held = link.held, None
        if held is None:
            return
        for frame in held:
            if link.dropped:
                break
            self._send_push(link, frame)

    def _send_push(self, link: _Link, frame: bytes) -> None:
        eff_conn = link.conn
        try:
            if link.queued_bytes + len(frame) > self.config.max_pending_bytes:
                raise trio.WouldBlock
            link.outbox.send_nowait(frame)
            link.queued_bytes += len(frame)
        except trio.WouldBlock:
            log.warning("dropping subscriber conn %d: it does not read its notifications", eff_conn.conn_id)
            link.dropped = True
            link.stop_reading()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _store_failed(request: bytes) -> bytes:
    return p.encode_error(p.salvage_id(request), ErrorCode.INTERNAL_ERROR,
                          "Internal error: the store could not be written; retry the request.",
                          {"reason": "store_write_failed"})


async def _linger_close(stream: trio.SocketStream) -> None:
    """Half-close, then discard (unparsed) what the peer still sends, briefly, before close.

    Closing an AF_UNIX socket that has unread input makes the peer's next read fail with
    ECONNRESET (net/unix/af_unix.c, unix_release_sock), which can hide our last frame from
    it. Draining first lets the peer read that frame and then a clean EOF. Bounded by
    ``_LINGER_S`` seconds and ``_LINGER_DRAIN_BYTES``.
    """
    with trio.move_on_after(_LINGER_S):
        try:
            await stream.send_eof()
            drained = 0
            while drained < _LINGER_DRAIN_BYTES:
                data = await stream.receive_some(65536)
                if not data:
                    break
                drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


# --------------------------------------------------------------------------- entry point
def configure_logging(level: str = "INFO") -> None:
    """Log to stderr (journald picks it up): ``LEVEL logger: message``; audit lines are JSON."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


_audit_log = logging.getLogger("parrot_ipc.audit")
_AUDIT_ENCODER = msgspec.json.Encoder()


def audit_sink(event: str, fields: dict[str, Any]) -> None:
    """Write one audit event as a JSON line (with ``ts``, RFC 3339) to the ``parrot_ipc.audit``
    logger: stderr, and the ``--audit-log`` file when one is open. Fields never hold tokens,
    secrets or message content (the core never puts them there)."""
    if _audit_log.isEnabledFor(logging.INFO):
        line = _AUDIT_ENCODER.encode({"ts": rfc3339(time.time()), "event": event, **fields})
        _audit_log.info("%s", line.decode())


def open_audit_file(path: str) -> None:
    """Also send audit lines to ``path``: appended, created 0600, never through a symlink.

    Raises errors.StartupError if the file cannot be opened or is not ours with mode 0600.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise errors.StartupError(f"refusing to start: cannot open audit log {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise errors.StartupError(
            f"refusing to start: audit log {path} must be owned by uid {os.geteuid()} with mode 0600; "
            f"found uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}")
    handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    handler.setFormatter(logging.Formatter("%(message)s"))
    _audit_log.addHandler(handler)


async def _serve_until_signal(server: BrokerServer, reload: Callable[[], None] | None) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            watch_scope = trio.CancelScope()

            async def watch() -> None:
                with watch_scope:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            if reload is not None:
                                reload()
                            continue
                        log.info("received %s: shutting down", signal.Signals(signum).name)
                        server.shutdown()
                        return

            nursery.start_soon(watch)
            await server.serve()  # returns once shut down and drained
            watch_scope.cancel()


_FD_HEADROOM = 64  # descriptors beyond the connections: listener, store, logs, pidfds


def _fit_nofile_limit(max_connections: int) -> None:
    """Raise RLIMIT_NOFILE to fit ``max_connections``; say so in the log if the hard limit is lower."""
    wanted = max_connections + _FD_HEADROOM
    soft, hard = os_limits.raise_nofile_limit(wanted)
    if soft < wanted:
        log.warning("RLIMIT_NOFILE hard limit is %d, lower than max_connections + %d = %d: about %d "
                    "connections fit (raise LimitNOFILE= or ulimit -Hn)", hard, _FD_HEADROOM, wanted,
                    max(0, soft - _FD_HEADROOM))
    else:
        log.debug("RLIMIT_NOFILE soft limit %d (max_connections %d)", soft, max_connections)


def open_store(kind: Literal["sqlite", "memory"], state_dir: str | None, config: BrokerConfig) -> Store:
    """The broker's store: a :class:`SqliteStore` in ``state_dir`` (default
    :func:`parrot_ipc.store_sqlite.default_state_dir`), or a throwaway :class:`MemoryStore`.

    Raises:
        errors.StartupError: the state directory or database cannot be used (one line).
    """
    if kind == "memory":
        return MemoryStore()
    from ..store.sqlite import SqliteStore, default_state_dir

    path = state_dir or default_state_dir()
    store = SqliteStore.open(path, durability=config.durability)
    log.info("state: %s (durability %s)", store.path, config.durability)
    return store


def run_broker(socket_path: str, config: BrokerConfig | LoadedConfig | None = None, *,
               config_path: str | None = None, store: Literal["sqlite", "memory"] = "sqlite",
               state_dir: str | None = None, commit_mode: Literal["group", "per_request"] = "group") -> None:
    """Run a broker on ``socket_path`` until SIGTERM or SIGINT; SIGHUP reloads the policy. Blocks.

    Opens the store (``"sqlite"``: durable, in ``state_dir``; ``"memory"``: throwaway), creates
    or checks the runtime directory (0700, or 0750 with a socket group), binds the socket
    (0600/0660, under umask 0o077), admits peers by the config's policy (by default our UID and
    root), and unlinks the socket on the way out. On a clean stop the store writes what is
    still pending and closes. Under socket activation (``$LISTEN_PID``/``$LISTEN_FDS``,
    sd_listen_fds(3)) it serves the passed fd 3 instead, and neither creates, binds nor unlinks
    anything (systemd owns the socket file). With ``$NOTIFY_SOCKET`` set it reports to the
    service manager (sd_notify(3)): ``READY=1``, ``STATUS=`` counts, ``WATCHDOG=1``,
    ``STOPPING=1``.

    Args:
        socket_path: where to listen.
        config: a loaded config (:func:`parrot_ipc.config_file.load_config`) or bare settings.
        config_path: the file SIGHUP re-reads (None: the default location).
        store, state_dir: which store, and where the SQLite one lives.
        commit_mode: ``"group"``, or ``"per_request"`` (a benchmark baseline only).

    Raises:
        errors.StartupError: the directory or socket path is unsafe, a broker already
            answers there, or the state database is locked, corrupt or not writable.
    """
    if not isinstance(config, LoadedConfig):
        loaded = load_config(None, explicit=False)
        loaded = LoadedConfig(loaded.path, config or loaded.server, loaded.rules, loaded.policy,
                              loaded.socket_gid, loaded.shared_secret)
    else:
        loaded = config
    st = open_store(store, state_dir, loaded.server)
    close_store = getattr(st, "close", None)
    try:
        listener, where, release = _acquire_listener(socket_path, loaded.socket_gid)
        _fit_nofile_limit(loaded.server.max_connections)
        broker = Broker(config=loaded.server, policy=loaded.policy, clock=time.time, audit=audit_sink,
                        shared_secret=loaded.shared_secret, store=st, id_floor=getattr(st, "max_id", None),
                        resources=ResourceDir(loaded.server.resources_dir))
        supervisor = _Supervisor(systemd.Notifier.from_env(), systemd.watchdog_interval())

        def on_listener_closed() -> None:
            release()
            supervisor.stopping()

        server = BrokerServer(broker, listener, commit_mode=commit_mode, on_listener_closed=on_listener_closed)

        def reload() -> None:
            path = None if config_path is None else Path(config_path)
            try:
                fresh = load_config(path, explicit=config_path is not None)
            except ConfigError as exc:
                log.error("config reload failed, keeping the current policy: %s", exc)
                audit_sink("config_reload_failed", {"error": str(exc)})
                return
            server.reload_policy(fresh.policy, str(fresh.path or "(defaults)"))
            log.info("config reloaded from %s", fresh.path or "(defaults)")

        log.info("parrot-ipc broker listening on %s (uid %d, pid %d, policy %s)", where, os.geteuid(),
                 os.getpid(),
                 "default" if loaded.rules is None else f"{len(loaded.rules)} rule(s) from {loaded.path}")
        try:
            trio.run(_serve_and_notify, server, supervisor, reload)
        finally:
            release()
            listener.close()
            supervisor.notifier.close()
    finally:
        if close_store is not None:
            try:
                close_store()
            except Exception as exc:  # the last writes failed: say so, in one line
                log.error("closing the store failed: %s", exc)
    log.info("broker stopped")


# --------------------------------------------------------------------------- systemd hooks
_STATUS_INTERVAL_S = 5.0


def _acquire_listener(socket_path: str, group_gid: int | None = None) -> tuple[stdsocket.socket, str, Callable[[], None]]:
    """The listening socket, where it is (for the log), and how to remove it (idempotent).

    Socket activation wins: the passed socket is served as is and never unlinked.
    """
    activated = systemd.activated_listener()
    if activated is not None:
        name = activated.getsockname()
        where = f"{name or '(unnamed)'} (fd {systemd.SD_LISTEN_FDS_START}, socket-activated)"
        return activated, where, lambda: None
    os_paths.ensure_runtime_dir(os.path.dirname(os.path.abspath(socket_path)), group_gid=group_gid)
    listener, inode = os_paths.bind_listener(socket_path, group_gid=group_gid)
    return listener, socket_path, lambda: os_paths.remove_socket(socket_path, inode)


@dataclass
class _Supervisor:
    """What the broker tells the service manager (a no-op without ``$NOTIFY_SOCKET``)."""

    notifier: systemd.Notifier
    watchdog_s: float | None
    is_stopping: bool = False

    def stopping(self) -> None:
        if not self.is_stopping:
            self.is_stopping = True
            self.notifier.notify("STOPPING=1", "STATUS=shutting down")


def _status(broker: Broker) -> str:
    return f"STATUS=serving: {broker.connections} connection(s), {broker.live_sessions()} live session(s)"


async def _notify_loop(broker: Broker, sup: _Supervisor) -> None:
    """``READY=1`` now; then ``STATUS=`` every 5 s and ``WATCHDOG=1`` every half watchdog timeout."""
    wd_every = sup.watchdog_s / 2 if sup.watchdog_s else float("inf")
    sup.notifier.notify("READY=1", _status(broker), *(["WATCHDOG=1"] if sup.watchdog_s else []))
    now = trio.current_time()
    next_status, next_wd = now + _STATUS_INTERVAL_S, now + wd_every
    while True:
        await trio.sleep_until(min(next_status, next_wd))
        now = trio.current_time()
        out: list[str] = []
        if now >= next_wd:
            out.append("WATCHDOG=1")
            next_wd = now + wd_every
        if now >= next_status:
            if not sup.is_stopping:
                out.append(_status(broker))
            next_status = now + _STATUS_INTERVAL_S
        if out:
            sup.notifier.notify(*out)


async def _serve_and_notify(server: BrokerServer, sup: _Supervisor, reload: Callable[[], None] | None) -> None:
    async with trio.open_nursery() as nursery:
        if sup.notifier.enabled:
            nursery.start_soon(_notify_loop, server.broker, sup)
        await _serve_until_signal(server, reload)
        nursery.cancel_scope.cancel()
