"""The trio shell's server: the accept loop, the ticker, the core's effects, shutdown.

:class:`BrokerServer` serves a :class:`parrot_ipc.core.Broker` on any ``trio.abc.Listener``
(the daemon gives it a ``trio.SocketListener`` on the AF_UNIX socket; tests give it in-memory
streams) and learns who each peer is from an injected ``identify(stream)``. Each accepted
stream becomes a :class:`~parrot_ipc.shell.connection.PeerLink`; with a journaled store the
:class:`~parrot_ipc.shell.commit.GroupCommit` task owns the writes. Shutdown stops accepting,
closes the listener, lets responses in flight be written (up to ``shutdown_grace_s``), then
closes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import trio

from ..core import Broker, BrokerConfig, Drop, PeerCredentials, Push, Wake
from ..core import protocol as p
from ..core.broker import Connection, WaitForMail
from ..core.policy import Policy
from ..errors import ErrorCode, SlowReader
from ..os import peer as os_peer
from ..store import Journaled
from ..store.committer import Committer
from .commit import GroupCommit
from .connection import LINGER_S, PeerLink, linger_close
from .phase import LinkEvent

if TYPE_CHECKING:  # types only: the socket calls are the OS layer's and trio's
    import socket as stdsocket

log = logging.getLogger("parrot_ipc.server")
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_REFUSE_WRITE_S = 0.05  # the refusal line goes into an empty socket buffer: never wait long
_TICK_MAX_S = 1.0

#: ``identify(stream)``: the peer's credentials, read before any byte (SO_PEERCRED in the daemon).
Identify = Callable[[trio.abc.Stream], PeerCredentials]


def socket_listener(sock: stdsocket.socket) -> trio.SocketListener:
    """A trio listener over a bound, listening stdlib stream socket (it takes the socket over).

    Raises:
        ValueError: ``sock`` is not a listening stream socket (``trio.SocketListener``).
    """
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def identify_socket_stream(stream: trio.abc.Stream) -> PeerCredentials:
    """The peer of an accepted ``trio.SocketStream``: :func:`parrot_ipc.os.peer.identify_peer`
    (SO_PEERCRED, SO_PEERGROUPS, SO_PEERPIDFD attestation; unix(7)).

    Raises:
        OSError: SO_PEERCRED cannot be read, or ``stream`` is not a socket stream (ENOTSOCK).
    """
    if not isinstance(stream, trio.SocketStream):
        raise OSError(errno.ENOTSOCK, "not a socket stream")
    # A trio socket has the stdlib getsockopt(), the only method identify_peer calls.
    return os_peer.identify_peer(cast("stdsocket.socket", stream.socket))


class BrokerServer:
    """Serve a :class:`Broker` on a trio listener.

    Args:
        broker: the core.
        listener: yields one ``trio.abc.Stream`` per peer (``trio.SocketListener`` in the daemon).
        identify: the peer's credentials for a freshly accepted stream, before any byte is
            read; raises ``OSError`` if they cannot be read (the stream is then closed).
        clock: the broker's clock (epoch seconds; :func:`parrot_ipc.shell.clock.trio_wall_clock`
            in the daemon), which the ticker compares ``Broker.next_deadline()`` with.
        on_listener_closed: called once the listener is closed at shutdown (unlink the socket,
            tell the service manager ``STOPPING=1``).
        opening: the rest of the store's opening, blocking (run in a worker thread while
            ``ping`` and ``get_token`` are already answered; issue 14): returns the function
            that adopts what it read, called on the event loop. If it raises, the broker stops
            and :attr:`open_error` holds the exception. None: the store is open already.

    Use :meth:`serve` inside a nursery (``await nursery.start(server.serve)``) and
    :meth:`shutdown` to stop it.
    """

    def __init__(self, broker: Broker, listener: trio.abc.Listener[trio.abc.Stream], *, identify: Identify,
                 clock: Callable[[], float], on_listener_closed: Callable[[], None] | None = None,
                 opening: Callable[[], Callable[[], None]] | None = None) -> None:
        self.broker = broker
        self._opening = opening
        self._open_done = trio.Event()
        #: Why the store's opening failed (the broker then stops), or None.
        self.open_error: BaseException | None = None
        self.config: BrokerConfig = broker.config
        self._listener = listener
        self._identify = identify
        self._clock = clock
        self._on_listener_closed = on_listener_closed
        self._links: dict[Connection, PeerLink] = {}
        self._streams = 0  # accepted streams still open (max_connections)
        self._last_full_warning = float("-inf")
        self._waiters: dict[str, trio.Event] = {}
        self._polling: dict[Connection, str] = {}  # a long poll's connection -> the name it waits on
        self._closing = False
        self._shutdown = trio.Event()
        self._deferred: list[tuple[int, Push]] = []  # pushes waiting for their commit
        store = broker.store
        self.group: GroupCommit | None = None
        if isinstance(store, Journaled):
            committer = Committer(store, keep_lease=broker.bindings.is_pushed)  # a push's lease waits for its commit
            self.group = GroupCommit(committer, broker.config.durability, on_commit=self._release_deferred)
        self._full_frame = p.encode_error(
            None, ErrorCode.RATE_LIMITED,
            f"The broker is at max_connections ({self.config.max_connections}); retry later.",
            {"reason": "server_full", "retry_after_s": 1.0})

    # ------------------------------------------------------------------ lifecycle
    @property
    def closing(self) -> bool:
        """True once shutdown began: connections stop reading after their current chunk."""
        return self._closing

    def reload_policy(self, policy: Policy, label: str = "") -> None:
        """Apply a reloaded admission policy to the broker and every live connection
        (``label`` names its source in the audit line)."""
        self.broker.replace_policy(policy, label)
        self.apply_effects()

    def shutdown(self) -> None:
        """Begin a clean shutdown: stop accepting, finish responses in flight, close."""
        self._shutdown.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until :meth:`shutdown`; then drain for up to ``shutdown_grace_s``."""
        async with trio.open_nursery() as committing:
            if self.group is not None:
                committing.start_soon(self.group.run)
            async with trio.open_nursery() as conns:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(self._accept_loop, conns)
                    accepting.start_soon(self._open_store)
                    accepting.start_soon(self._ticker)
                    task_status.started()
                    await self._shutdown.wait()
                    accepting.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await self._listener.aclose()
                if self._on_listener_closed is not None:
                    self._on_listener_closed()
                self._begin_drain()
                conns.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace_s
            committing.cancel_scope.cancel()  # what is still pending is written by the store's close()

    @property
    def opened(self) -> bool:
        """True once the store is open (at once without ``opening``)."""
        return self._open_done.is_set() and self.open_error is None

    async def wait_opened(self) -> bool:
        """Wait until the store's opening is over: True if it is open, False if it failed."""
        await self._open_done.wait()
        return self.open_error is None

    async def _open_store(self) -> None:
        """Run ``opening`` in a worker thread, adopt its result here, and let held frames go."""
        if self._opening is not None:
            t0 = trio.current_time()
            try:
                adopt = await trio.to_thread.run_sync(self._opening)
            except Exception as exc:  # StartupError, one line: the daemon raises it after the drain
                self.open_error = exc
                self._open_done.set()
                self.shutdown()
                return
            adopt()
            log.info("store open: mailboxes read in %.3f s", trio.current_time() - t0)
            self.apply_effects()
        self._open_done.set()

    def _begin_drain(self) -> None:
        self._closing = True
        log.info("shutting down: %d connection(s) to finish", len(self._links))
        for link in list(self._links.values()):
            link.stop_reading()
        for ev in self._waiters.values():
            ev.set()

    async def _accept_loop(self, conns: trio.Nursery) -> None:
        while True:
            try:
                stream = await self._listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                log.warning("accept failed (%s); retrying in 100 ms", os.strerror(exc.errno or 0))
                await trio.sleep(0.1)
                continue
            if self._streams >= self.config.max_connections:
                await self._refuse_full(stream)
                continue
            self._streams += 1
            conns.start_soon(self._serve_connection, stream)

    async def _refuse_full(self, stream: trio.abc.Stream) -> None:
        """One -32003 ``server_full`` line (written at once or not at all), then close."""
        now = trio.current_time()
        if now - self._last_full_warning > 1.0:
            self._last_full_warning = now
            log.warning("max_connections (%d) reached: refusing new connections at once",
                        self.config.max_connections)
        with trio.move_on_after(_REFUSE_WRITE_S):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(self._full_frame)
        with trio.CancelScope(shield=True):
            await stream.aclose()

    async def _ticker(self) -> None:
        """Run the core's time-driven work (lease expiry, purges) when it is due, by the
        broker's clock."""
        broker = self.broker
        if not await self.wait_opened():
            return
        while True:
            delay = max(0.0, min(_TICK_MAX_S, broker.next_deadline() - self._clock()))
            await trio.sleep(delay)
            broker.tick()
            self.apply_effects()
            if self.group is not None:
                self.group.kick()

    # ------------------------------------------------------------------ one connection
    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        try:
            # Credentials first, before any byte is read (docs/protocol.md, Connection life).
            try:
                peer = self._identify(stream)
            except OSError as exc:
                log.warning("cannot read peer credentials (%s); closing", exc)
                return
            try:
                await self._serve_peer(stream, peer)
            finally:
                if peer.process is not None:
                    peer.process.close()  # the pinned pidfd lives as long as the connection
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except SlowReader as exc:
            log.warning("closing a connection: %s", exc)
        finally:
            self._streams -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve_peer(self, stream: trio.abc.Stream, peer: PeerCredentials) -> None:
        """Admit ``peer`` (or write its one refusal line) and serve it until it closes."""
        admitted = self.broker.accept(peer)
        if isinstance(admitted, bytes):
            with trio.move_on_after(LINGER_S):
                await stream.send_all(admitted)
            await linger_close(stream)
            return
        if peer.process is not None and not admitted.admission.pins_exe:
            peer.process.close()  # nothing will ask again: free the pidfd now (a reload that
            # later pins the executable finds it closed, and fails closed)
        link = self._links[admitted] = PeerLink(admitted, self)
        try:
            broker_closed = await link.run(stream)
        finally:
            del self._links[admitted]
        if broker_closed:
            await linger_close(stream)

    async def wait_for_mail(self, conn: Connection, wait: WaitForMail) -> bytes:
        """Answer a long-poll ``receive``: wait (up to ``wait.wait_s`` seconds, trio time) for
        a Wake of the connection's instance, or shutdown; returns the response frame."""
        deadline = trio.current_time() + wait.wait_s
        while True:
            name = conn.instance_id
            if name is not None and not self._closing:
                ev = self._waiters.get(name)
                if ev is None:
                    ev = self._waiters[name] = trio.Event()
                self._polling[conn] = name
                try:
                    with trio.move_on_at(deadline):
                        await ev.wait()
                finally:
                    self._polling.pop(conn, None)
            final = self._closing or name is None or trio.current_time() >= deadline
            out = self.broker.poll_receive(conn, wait, final=final)
            if out is not None:
                return out

    def _wake_poll(self, conn: Connection) -> None:
        """End the long poll of ``conn`` now, if it has one (its connection is being dropped).

        Wakes every poll on that name; the others find no mail and wait again.
        """
        name = self._polling.pop(conn, None)
        ev = None if name is None else self._waiters.pop(name, None)
        if ev is not None:
            ev.set()

    # ------------------------------------------------------------------ effects
    def apply_effects(self) -> None:
        """Carry out the effects the core queued: Push (after the commit of its state), Wake
        (a long poll), Drop (stop reading that connection, and end its long poll)."""
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
                    link.on(LinkEvent.DROP)
                self._wake_poll(eff.conn)  # a long poll of a dropped peer ends now, not at wait_s

    def _push(self, eff: Push) -> None:
        group = self.group
        if group is not None and group.dirty():
            self._deferred.append((group.written_seq, eff))  # its lease (and the message) first
            group.kick()
            return
        self._push_now(eff)

    def _push_now(self, eff: Push) -> None:
        link = self._links.get(eff.conn)
        if link is not None:  # else closed meanwhile: the lease runs out and it is delivered again
            link.push(eff.frame)

    def _release_deferred(self) -> None:
        """After a commit: send the deferred pushes whose state is now durable, in order."""
        if not self._deferred or self.group is None:
            return
        committer = self.group.committer
        ready = [eff for seq, eff in self._deferred if committer.is_durable(seq)]
        if ready:
            self._deferred = [(seq, eff) for seq, eff in self._deferred if not committer.is_durable(seq)]
            for eff in ready:
                self._push_now(eff)
