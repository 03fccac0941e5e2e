"""The OS layer's systemd part: socket activation and readiness notification, without libsystemd.

- :func:`activated_listener` implements the receiving side of socket activation
  (sd_listen_fds(3)): when ``$LISTEN_PID`` is our pid and ``$LISTEN_FDS`` >= 1, the
  listening socket is file descriptor 3 (``SD_LISTEN_FDS_START``).
- :class:`Notifier` implements sd_notify(3): one datagram of newline-separated
  ``KEY=VALUE`` assignments to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or
  ``@name`` for the abstract namespace).
- :func:`watchdog_interval` implements sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` and
  ``$WATCHDOG_PID``.

Plain functions with the environment and pid injectable, so they are tested without a
service manager. No awaits here: the trio shell (:mod:`parrot_ipc.shell.server`) schedules the
notifications.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from typing import Final

from ..errors import StartupError

log = logging.getLogger("parrot_ipc.systemd")

SD_LISTEN_FDS_START: Final = 3
_LISTEN_VARS: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _parse_pid(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


# --------------------------------------------------------------------------- socket activation
def listen_fds(env: MutableMapping[str, str] | None = None, pid: int | None = None,
               unset_environment: bool = True) -> list[int]:
    """The file descriptors passed by the service manager, as sd_listen_fds(3) defines them.

    Args:
        env: the environment to read (default :data:`os.environ`).
        pid: our process id (default :func:`os.getpid`). The descriptors are ours only if
            ``$LISTEN_PID`` equals it; a forked or exec'ed child must not take them.
        unset_environment: remove ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` from
            ``env`` (whatever the outcome, as sd_listen_fds(3) does), so that our own child
            processes never see them.

    Returns:
        ``[3, 4, ...]``, one per passed descriptor, each set close-on-exec; ``[]`` when
        nothing was passed to us (no or malformed variables, another pid, ``LISTEN_FDS=0``).
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    try:
        listen_pid = _parse_pid(env.get("LISTEN_PID"))
        if listen_pid is None or listen_pid != pid:
            return []
        try:
            count = int(env.get("LISTEN_FDS", ""))
        except ValueError:
            return []
        if count <= 0:
            return []
        fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
        for fd in fds:
            os.set_inheritable(fd, False)
        return fds
    finally:
        if unset_environment:
            for var in _LISTEN_VARS:
                env.pop(var, None)


def adopt_listener(fd: int) -> socket.socket:
    """Wrap a passed descriptor as a listening socket, after checking what it is.

    Checks with getsockopt(2) ``SO_DOMAIN`` == AF_UNIX, ``SO_TYPE`` == SOCK_STREAM and
    ``SO_ACCEPTCONN`` (it listens); see socket(7). Returns it non-blocking.

    Raises:
        StartupError: one line naming the descriptor and what it is instead. The
            descriptor is left open (it is the service manager's).
    """
    try:
        dup = os.dup(fd)
    except OSError as exc:
        raise StartupError(f"refusing to start: socket activation passed fd {fd}, which is not open "
                           f"({exc.strerror})") from None
    try:
        domain = socket.socket(fileno=dup)
    except OSError as exc:
        os.close(dup)
        raise StartupError(f"refusing to start: socket activation passed fd {fd}, which is not a socket "
                           f"({exc.strerror})") from None
    try:
        family = domain.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        kind = domain.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        listening = domain.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        domain.close()
        raise StartupError(f"refusing to start: cannot inspect activated fd {fd}: {exc.strerror}") from None
    if family != socket.AF_UNIX or kind != socket.SOCK_STREAM or not listening:
        domain.close()
        raise StartupError(
            f"refusing to start: socket activation passed fd {fd} with domain {family}, type {kind}, "
            f"listening {bool(listening)}; need a listening AF_UNIX SOCK_STREAM socket "
            "(ListenStream=/path in the .socket unit)"
        )
    domain.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
    sock.setblocking(False)
    return sock


def activated_listener(env: MutableMapping[str, str] | None = None, pid: int | None = None) -> socket.socket | None:
    """The listening socket systemd passed us (fd 3), or None when not socket-activated.

    Consumes the ``LISTEN_*`` variables (see :func:`listen_fds`). With more than one
    descriptor, fd 3 is served and the others are left alone (logged).

    Raises:
        StartupError: fd 3 is not a listening AF_UNIX stream socket.
    """
    fds = listen_fds(env, pid)
    if not fds:
        return None
    if len(fds) > 1:
        log.warning("socket activation passed %d fds; serving fd %d only", len(fds), fds[0])
    return adopt_listener(fds[0])


# --------------------------------------------------------------------------- sd_notify
def notify_address(value: str | None) -> str | None:
    """The sockaddr for a ``$NOTIFY_SOCKET`` value: a path, ``@name`` -> ``"\\0name"``, else None.

    sd_notify(3) accepts an absolute path or an abstract name starting with ``@``; anything
    else (empty, relative) is not a notification socket.
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Send sd_notify(3) state strings to the service manager.

    Args:
        address: the ``$NOTIFY_SOCKET`` value (``/path`` or ``@abstract``), or None: then
            every :meth:`notify` is a no-op returning False.

    The datagram socket is opened on first use and kept; :meth:`close` releases it. A send
    that fails is logged (once per kind of error) and reported as False, never raised: a
    broker must not die because its supervisor went away.
    """

    def __init__(self, address: str | None) -> None:
        self.address = notify_address(address)
        self._sock: socket.socket | None = None
        self._logged: set[int] = set()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` (left in the environment, as sd_notify(0, ...) does)."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """True if ``$NOTIFY_SOCKET`` named a usable socket address."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments (e.g. ``"READY=1"``, ``"STATUS=..."``) in one datagram.

        Returns True if the datagram was sent, False when disabled or on an OS error.
        Newlines inside a value are replaced by spaces (the protocol is line-based).
        """
        if self.address is None or not assignments:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if (exc.errno or 0) not in self._logged:
                self._logged.add(exc.errno or 0)
                log.warning("sd_notify to %s failed: %s", self.address.replace("\0", "@"), exc.strerror)
            return False
        return True

    def close(self) -> None:
        """Close the datagram socket (a later :meth:`notify` opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds, as sd_watchdog_enabled(3) reads it, or None if off.

    ``$WATCHDOG_USEC`` (microseconds, > 0) is the timeout; it applies to us only if
    ``$WATCHDOG_PID`` is unset or equals ``pid`` (default :func:`os.getpid`). Send
    ``WATCHDOG=1`` at least every half of the returned value.
    """
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    if "WATCHDOG_PID" in env and _parse_pid(env["WATCHDOG_PID"]) != pid:
        return None
    return usec / 1_000_000
