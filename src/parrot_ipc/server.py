"""The trio shell: accepts connections, pins peer credentials, runs the core, writes frames.

The only module that awaits. One task reads each connection and one writes it; the core
(:class:`parrot_ipc.core.Broker`) decides everything. Shutdown (SIGTERM/SIGINT) stops
accepting, unlinks the socket, lets responses in flight be written, then closes.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket as stdsocket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from . import oslayer, systemd
from .core import Broker, BrokerConfig, DefaultPolicy, FrameBuffer, FrameTooLarge, PeerCredentials, Push, Wake
from .core.broker import Connection, WaitForMail

log = logging.getLogger("parrot_ipc.server")
_RECV_BYTES = 65536
_LINGER_S = 1.0
_LINGER_DRAIN_BYTES = 1 << 20
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(eq=False)
class _Link:
    """Shell-side state of one connection: its outbox and the scope its reads run in."""

    conn: Connection
    outbox: trio.MemorySendChannel[bytes]
    read_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    dropped: bool = False  # the broker decided to close this connection


class BrokerServer:
    """Serve a :class:`Broker` on a listening AF_UNIX socket.

    Args:
        broker: the core.
        listener: a bound, listening, non-blocking stdlib AF_UNIX stream socket.
        read_peer: reads a connected socket's peer credentials (the OS layer's
            :func:`parrot_ipc.oslayer.peer_credentials`, injectable for tests).
        open_pidfd: returns a pidfd for the peer or None (SO_PEERPIDFD).

    Use :meth:`serve` inside a nursery (``await nursery.start(server.serve)``) and
    :meth:`shutdown` to stop it.
    """

    def __init__(
        self,
        broker: Broker,
        listener: stdsocket.socket,
        *,
        read_peer: Callable[[stdsocket.socket], PeerCredentials] = oslayer.peer_credentials,
        open_pidfd: Callable[[stdsocket.socket], int | None] = oslayer.peer_pidfd,
        on_listener_closed: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.config: BrokerConfig = broker.config
        self._listener = trio.socket.from_stdlib_socket(listener)
        self._read_peer = read_peer
        self._open_pidfd = open_pidfd
        self._on_listener_closed = on_listener_closed
        self._links: dict[Connection, _Link] = {}
        self._waiters: dict[str, trio.Event] = {}
        self._closing = False
        self._shutdown = trio.Event()
        self._ticker_wakeup = trio.Event()

    # ------------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        """Begin a clean shutdown: stop accepting, finish responses in flight, close."""
        self._shutdown.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until :meth:`shutdown`; then drain for up to ``shutdown_grace_s``."""
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
                link.read_scope.cancel()
            for ev in self._waiters.values():
                ev.set()
            conns.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace_s

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
            conns.start_soon(self._serve_connection, sock)

    async def _ticker(self) -> None:
        """Run the core's time-driven work (lease expiry, purges) when it is due."""
        broker = self.broker
        while True:
            delay = max(0.0, min(1.0, broker.next_deadline() - time.time()))
            await trio.sleep(delay)
            broker.tick()
            self._apply_effects()

    # ------------------------------------------------------------------ one connection
    async def _serve_connection(self, sock: trio.socket.SocketType) -> None:
        stream = trio.SocketStream(sock)
        pidfd: int | None = None
        try:
            # Credentials first, before any byte is read (docs/protocol.md, Connection life).
            try:
                peer = self._read_peer(sock)  # type: ignore[arg-type]
            except OSError as exc:
                log.warning("cannot read peer credentials (%s); closing", exc)
                return
            pidfd = self._open_pidfd(sock)  # type: ignore[arg-type]
            if pidfd is not None:
                peer = PeerCredentials(peer.pid, peer.uid, peer.gid, has_pidfd=True)
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
        finally:
            if pidfd is not None:
                os.close(pidfd)
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
                nursery.start_soon(self._writer, stream, recv, nursery.cancel_scope)
                try:
                    broker_closed = await self._reader(link, stream)
                finally:
                    send.close()  # the writer drains what is queued, then exits
        finally:
            del self._links[conn]
            self.broker.close(conn)
        return broker_closed

    async def _writer(self, stream: trio.SocketStream, recv: trio.MemoryReceiveChannel[bytes],
                      scope: trio.CancelScope) -> None:
        try:
            async with recv:
                async for frame in recv:
                    batch = [frame]
                    while True:  # coalesce whatever else is queued into one write
                        try:
                            batch.append(recv.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await stream.send_all(b"".join(batch) if len(batch) > 1 else frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()  # the peer is gone: stop reading too

    async def _reader(self, link: _Link, stream: trio.SocketStream) -> bool:
        """Read and answer frames until EOF (returns False) or a broker-side close (True)."""
        broker, cfg, conn = self.broker, self.config, link.conn
        framer = FrameBuffer(cfg.max_frame_bytes)
        timeout = cfg.handshake_timeout_s
        while not (self._closing or link.dropped):
            with trio.CancelScope() as link.read_scope:
                with trio.move_on_after(timeout) as timer:
                    data = await stream.receive_some(_RECV_BYTES)
            if link.read_scope.cancelled_caught:
                return True
            if timer.cancelled_caught:
                self._audit_timeout(conn, timeout)
                return True
            if not data:
                return False
            try:
                frames = framer.feed(data)
            except FrameTooLarge as exc:
                await link.outbox.send(broker.frame_too_large(conn, int(exc.args[0])))
                return True
            for frame in frames:
                out = broker.handle_frame(conn, frame)
                if isinstance(out, WaitForMail):
                    out = await self._wait_for_mail(conn, out)
                if out is not None:
                    await link.outbox.send(out)
                self._apply_effects()
            if conn.subscribed:
                timeout = float("inf")
            elif frames:
                timeout = cfg.idle_timeout_s
        return True

    def _audit_timeout(self, conn: Connection, timeout_s: float) -> None:
        kind = "handshake_timeout" if timeout_s == self.config.handshake_timeout_s else "idle_timeout"
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

    def _push(self, eff: Push) -> None:
        link = self._links.get(eff.conn)
        if link is None:
            return  # closed meanwhile: the lease runs out and the message is delivered again
        try:
            link.outbox.send_nowait(eff.frame)
        except trio.WouldBlock:
            log.warning("dropping subscriber conn %d: it does not read its notifications", eff.conn.conn_id)
            link.dropped = True
            link.read_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


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


async def _serve_until_signal(server: BrokerServer) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            watch_scope = trio.CancelScope()

            async def watch() -> None:
                with watch_scope:
                    async for signum in signals:
                        log.info("received %s: shutting down", signal.Signals(signum).name)
                        server.shutdown()
                        return

            nursery.start_soon(watch)
            await server.serve()  # returns once shut down and drained
            watch_scope.cancel()


def run_broker(socket_path: str, config: BrokerConfig | None = None) -> None:
    """Run a broker on ``socket_path`` until SIGTERM or SIGINT. Blocks.

    Creates or checks the runtime directory (0700), binds the socket (0600, under umask 0o077),
    admits by the default policy (our UID and root), and unlinks the socket on the way out.
    Under socket activation (``$LISTEN_PID``/``$LISTEN_FDS``, sd_listen_fds(3)) it serves the
    passed fd 3 instead, and neither creates, binds nor unlinks anything (systemd owns the
    socket file). With ``$NOTIFY_SOCKET`` set it reports to the service manager
    (sd_notify(3)): ``READY=1``, ``STATUS=`` counts, ``WATCHDOG=1``, ``STOPPING=1``.

    Raises:
        oslayer.StartupError: the directory or socket path is unsafe, a broker already
            answers there, or the activated fd is not a listening AF_UNIX stream socket.
    """
    config = config or BrokerConfig()
    listener, where, release = _acquire_listener(socket_path)
    broker = Broker(config=config, policy=DefaultPolicy(os.geteuid()), clock=time.time)
    supervisor = _Supervisor(systemd.Notifier.from_env(), systemd.watchdog_interval())

    def on_listener_closed() -> None:
        release()
        supervisor.stopping()

    server = BrokerServer(broker, listener, on_listener_closed=on_listener_closed)
    log.info("parrot-ipc broker listening on %s (uid %d, pid %d)", where, os.geteuid(), os.getpid())
    try:
        trio.run(_serve_and_notify, server, supervisor)
    finally:
        release()
        listener.close()
        supervisor.notifier.close()
    log.info("broker stopped")


# --------------------------------------------------------------------------- systemd hooks
_STATUS_INTERVAL_S = 5.0


def _acquire_listener(socket_path: str) -> tuple[stdsocket.socket, str, Callable[[], None]]:
    """The listening socket, where it is (for the log), and how to remove it (idempotent).

    Socket activation wins: the passed socket is served as is and never unlinked.
    """
    activated = systemd.activated_listener()
    if activated is not None:
        name = activated.getsockname()
        where = f"{name or '(unnamed)'} (fd {systemd.SD_LISTEN_FDS_START}, socket-activated)"
        return activated, where, lambda: None
    oslayer.ensure_runtime_dir(os.path.dirname(os.path.abspath(socket_path)))
    listener, inode = oslayer.bind_listener(socket_path)
    return listener, socket_path, lambda: oslayer.remove_socket(socket_path, inode)


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


async def _serve_and_notify(server: BrokerServer, sup: _Supervisor) -> None:
    async with trio.open_nursery() as nursery:
        if sup.notifier.enabled:
            nursery.start_soon(_notify_loop, server.broker, sup)
        await _serve_until_signal(server)
        nursery.cancel_scope.cancel()
