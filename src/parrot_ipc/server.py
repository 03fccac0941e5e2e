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
from pathlib import Path
from typing import Any

import msgspec
import trio

from . import oslayer
from .config_file import ConfigError, LoadedConfig, load_config
from .core import Broker, BrokerConfig, Drop, FrameBuffer, FrameTooLarge, PeerCredentials, Push, Wake
from .core.broker import Connection, WaitForMail
from .core.policy import Policy
from .core.timefmt import rfc3339

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
        read_peer: reads and attests a connected socket's peer (the OS layer's
            :func:`parrot_ipc.oslayer.identify_peer`; injectable for tests).

    Use :meth:`serve` inside a nursery (``await nursery.start(server.serve)``) and
    :meth:`shutdown` to stop it.
    """

    def __init__(
        self,
        broker: Broker,
        listener: stdsocket.socket,
        *,
        read_peer: Callable[[stdsocket.socket], PeerCredentials] = oslayer.identify_peer,
        on_listener_closed: Callable[[], None] | None = None,
    ) -> None:
        self.broker = broker
        self.config: BrokerConfig = broker.config
        self._listener = trio.socket.from_stdlib_socket(listener)
        self._read_peer = read_peer
        self._on_listener_closed = on_listener_closed
        self._links: dict[Connection, _Link] = {}
        self._waiters: dict[str, trio.Event] = {}
        self._closing = False
        self._shutdown = trio.Event()
        self._ticker_wakeup = trio.Event()

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
        finally:
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
            elif isinstance(eff, Drop):
                link = self._links.get(eff.conn)
                if link is not None:
                    link.dropped = True
                    link.read_scope.cancel()

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

    Raises oslayer.StartupError if the file cannot be opened or is not ours with mode 0600.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise oslayer.StartupError(f"refusing to start: cannot open audit log {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise oslayer.StartupError(
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


def run_broker(socket_path: str, config: BrokerConfig | LoadedConfig | None = None, *,
               config_path: str | None = None) -> None:
    """Run a broker on ``socket_path`` until SIGTERM or SIGINT; SIGHUP reloads the policy. Blocks.

    Creates or checks the runtime directory (0700, or 0750 with a socket group), binds the
    socket (0600/0660, under umask 0o077), admits peers by the config's policy (by default our
    UID and root), and unlinks the socket on the way out.

    Args:
        socket_path: where to listen.
        config: a loaded config (:func:`parrot_ipc.config_file.load_config`) or bare settings.
        config_path: the file SIGHUP re-reads (None: the default location).

    Raises:
        oslayer.StartupError: the directory or socket path is unsafe, or a broker already
            answers there.
    """
    if not isinstance(config, LoadedConfig):
        loaded = load_config(None, explicit=False)
        loaded = LoadedConfig(loaded.path, config or loaded.server, loaded.rules, loaded.policy,
                              loaded.socket_gid, loaded.shared_secret)
    else:
        loaded = config
    oslayer.ensure_runtime_dir(os.path.dirname(os.path.abspath(socket_path)), group_gid=loaded.socket_gid)
    listener, inode = oslayer.bind_listener(socket_path, group_gid=loaded.socket_gid)
    broker = Broker(config=loaded.server, policy=loaded.policy, clock=time.time, audit=audit_sink,
                    shared_secret=loaded.shared_secret)
    server = BrokerServer(broker, listener, on_listener_closed=lambda: oslayer.remove_socket(socket_path, inode))

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

    log.info("parrot-ipc broker listening on %s (uid %d, pid %d, policy %s)", socket_path, os.geteuid(),
             os.getpid(), "default" if loaded.rules is None else f"{len(loaded.rules)} rule(s) from {loaded.path}")
    try:
        trio.run(_serve_until_signal, server, reload)
    finally:
        oslayer.remove_socket(socket_path, inode)
        listener.close()
    log.info("broker stopped")
