"""What the running broker tells and hears from its supervisor: signals and sd_notify(3).

- SIGTERM and SIGINT begin a clean shutdown; SIGHUP calls the reload callback (signal(7)).
- With ``$NOTIFY_SOCKET`` set: ``READY=1`` once serving, ``STATUS=`` counts every 5 s,
  ``WATCHDOG=1`` every half watchdog timeout, ``STOPPING=1`` when the listener closes
  (sd_notify(3), sd_watchdog_enabled(3)).

:func:`run_until_signal` is the shell's entry point: the daemon calls it (it runs ``trio.run``).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..core import Broker
from ..os import systemd
from .clock import TrioWallClock
from .server import BrokerServer

log = logging.getLogger("parrot_ipc.server")
STATUS_INTERVAL_S = 5.0


@dataclass
class Supervisor:
    """What the broker tells the service manager (a no-op without ``$NOTIFY_SOCKET``).

    Attributes:
        notifier: the sd_notify(3) socket.
        watchdog_s: the watchdog timeout in seconds (``$WATCHDOG_USEC``), or None if off.
        is_stopping: ``STOPPING=1`` was sent.
    """

    notifier: systemd.Notifier
    watchdog_s: float | None
    is_stopping: bool = False

    @classmethod
    def from_env(cls) -> Supervisor:
        """From ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``/``$WATCHDOG_PID``."""
        return cls(systemd.Notifier.from_env(), systemd.watchdog_interval())

    def stopping(self) -> None:
        """Send ``STOPPING=1`` (once)."""
        if not self.is_stopping:
            self.is_stopping = True
            self.notifier.notify("STOPPING=1", "STATUS=shutting down")


def status_line(broker: Broker) -> str:
    """``STATUS=serving: N connection(s), M live session(s)``."""
    return f"STATUS=serving: {broker.connections} connection(s), {broker.live_sessions()} live session(s)"


async def notify_loop(broker: Broker, sup: Supervisor) -> None:
    """``READY=1`` now; then ``STATUS=`` every 5 s and ``WATCHDOG=1`` every half watchdog
    timeout (trio time). Never returns; cancel it."""
    wd_every = sup.watchdog_s / 2 if sup.watchdog_s else float("inf")
    sup.notifier.notify("READY=1", status_line(broker), *(["WATCHDOG=1"] if sup.watchdog_s else []))
    now = trio.current_time()
    next_status, next_wd = now + STATUS_INTERVAL_S, now + wd_every
    while True:
        await trio.sleep_until(min(next_status, next_wd))
        now = trio.current_time()
        out: list[str] = []
        if now >= next_wd:
            out.append("WATCHDOG=1")
            next_wd = now + wd_every
        if now >= next_status:
            if not sup.is_stopping:
                out.append(status_line(broker))
            next_status = now + STATUS_INTERVAL_S
        if out:
            sup.notifier.notify(*out)


async def _notify_once_open(server: BrokerServer, sup: Supervisor) -> None:
    """:func:`notify_loop` once the store is open (``READY=1`` then, not before); nothing if it
    failed to open (the broker is stopping)."""
    if await server.wait_opened():
        await notify_loop(server.broker, sup)


async def _watch_signals(server: BrokerServer, reload: Callable[[], None] | None,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                if reload is not None:
                    reload()
                continue
            log.info("received %s: shutting down", signal.Signals(signum).name)
            server.shutdown()
            return


async def serve_until_signal(server: BrokerServer, sup: Supervisor, reload: Callable[[], None] | None,
                             clock: TrioWallClock | None = None) -> None:
    """Serve until SIGTERM or SIGINT (then drain and return); SIGHUP calls ``reload``.

    Starts ``clock`` (so the broker's time follows trio's) and, with ``$NOTIFY_SOCKET``, the
    :func:`notify_loop`. Call it with ``trio.run``; the signal handlers are trio's, installed
    only while it runs.
    """
    if clock is not None:
        clock.start()
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, server, reload)
        if sup.notifier.enabled:
            nursery.start_soon(_notify_once_open, server, sup)
        await server.serve()  # returns once shut down and drained
        nursery.cancel_scope.cancel()


def run_until_signal(server: BrokerServer, sup: Supervisor, reload: Callable[[], None] | None,
                     clock: TrioWallClock | None = None) -> None:
    """Block in ``trio.run(serve_until_signal, ...)`` until the broker has stopped.

    Raises:
        Exception: whatever escapes the server (a bug, or an accept error that is not
            EMFILE/ENFILE/ENOMEM/ENOBUFS).
    """
    trio.run(serve_until_signal, server, sup, reload, clock)
