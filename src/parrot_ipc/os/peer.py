"""Peer credentials: every Linux call that says who is on the other end of a socket.

- SO_PEERCRED (``struct ucred``: pid, uid, gid; unix(7), socket(7)), SO_PEERGROUPS, and
  SO_PEERPIDFD (Linux 6.5+, option 77; missing from Python 3.11's :mod:`socket`).
- ``/proc/<pid>/exe`` and start time, read without racing PID reuse (proc(5), pidfd_open(2)).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
from typing import Final

from ..core.policy import PeerCredentials
from ..errors import PeerGone

SO_PEERPIDFD: Final = getattr(socket, "SO_PEERPIDFD", 77)
SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED: Final = struct.Struct("3i")


# --------------------------------------------------------------------------- peer credentials
def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Read SO_PEERCRED from a connected AF_UNIX socket.

    The kernel records the credentials at connect(2) time, so they describe the process that
    connected, whatever it sends later. Raises OSError if the socket has no peer.
    """
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def peer_pidfd(sock: socket.socket) -> int | None:
    """A pidfd for the peer (SO_PEERPIDFD), or None where the kernel has no such option.

    The caller owns the returned file descriptor and must close it. Raises :class:`PeerGone`
    when the kernel answers ESRCH: the peer has already exited and been reaped.
    """
    try:
        return int(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise PeerGone() from None
        return None


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary GIDs (SO_PEERGROUPS, Linux 4.13+; socket(7)). () if unknown."""
    size = 64 * 4
    for _ in range(4):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                size *= 8
                continue
            return ()
        return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return ()


def process_start_time(pid: int) -> int:
    """Field 22 of ``/proc/<pid>/stat`` (starttime, in clock ticks after boot; proc(5)).

    Raises OSError if the process is gone or unreadable, ValueError if the line is malformed.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        line = f.read()
    # comm (field 2) may hold spaces and parentheses: split after its last ')'.
    rest = line[line.rindex(b")") + 2 :].split()
    return int(rest[19])  # rest[0] is field 3, so field 22 is rest[19]


def attest_process(pid: int, pidfd: int | None) -> tuple[str | None, int | None, str | None]:
    """Read the peer's executable and start time without racing against PID reuse.

    With a pidfd: read ``/proc/<pid>/exe`` and the start time, then prove the pidfd's process
    is still alive (pidfd_send_signal(2) with signal 0). A pidfd always names the process that
    connected, so a live one means the PID was not recycled during the reads. Without a pidfd:
    read the start time before and after, and require them equal.

    Returns ``(exe, start_time, None)``, or ``(None, None, reason)`` when anything is uncertain
    (the peer exited, /proc is unreadable): callers fail closed.
    """
    if pid <= 0:
        return None, None, "no pid (the peer is in another pid namespace)"
    try:
        before = None if pidfd is not None else process_start_time(pid)
        exe = os.readlink(f"/proc/{pid}/exe")
        start = process_start_time(pid)
        if pidfd is not None:
            with contextlib.suppress(PermissionError):  # EPERM: it exists; we may not signal it
                signal.pidfd_send_signal(pidfd, 0)
        elif before != start:
            return None, None, "the pid was reused during attestation"
    except ProcessLookupError:
        return None, None, "the peer exited during attestation"
    except (OSError, ValueError, IndexError) as exc:
        return None, None, f"cannot read /proc/{pid}: {getattr(exc, 'strerror', None) or exc}"
    return exe, start, None


class PinnedProcess:
    """The peer process pinned at accept, for re-reading its executable before each request
    (:class:`parrot_ipc.core.policy.ProcessProbe`; issue 13, attestation holds after exec).

    Args:
        pid: the peer's pid (SO_PEERCRED).
        pidfd: its pidfd (SO_PEERPIDFD), owned from now on; None on kernels without one.
        start_time: its start time read at accept (field 22 of ``/proc/<pid>/stat``).

    With a pidfd, :meth:`exe` is one readlink(2) of ``/proc/<pid>/exe`` and one
    pidfd_send_signal(2) with signal 0: the pidfd names the process that connected, so a live
    one means the pid was not recycled. Without one, the start time is read before and after
    and must equal ``start_time`` (see :func:`attest_process`).
    """

    __slots__ = ("_pidfd", "_start_time", "closed", "pid")

    def __init__(self, pid: int, pidfd: int | None, start_time: int) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self._start_time = start_time
        self.closed = False

    def exe(self) -> str | None:
        """The process's executable now, or None (it exited, /proc is unreadable, its pid was
        reused, or the probe is closed): callers fail closed. Never raises."""
        if self.closed:
            return None
        if self._pidfd is None:
            exe, start, _ = attest_process(self.pid, None)
            return exe if start == self._start_time else None
        try:
            exe = os.readlink(f"/proc/{self.pid}/exe")
            with contextlib.suppress(PermissionError):  # EPERM: it exists; we may not signal it
                signal.pidfd_send_signal(self._pidfd, 0)
        except OSError:  # ProcessLookupError (ESRCH) included: the process that connected is gone
            return None
        return exe

    def close(self) -> None:
        """Close the pidfd (idempotent); :meth:`exe` answers None from now on."""
        if not self.closed:
            self.closed = True
            if self._pidfd is not None:
                os.close(self._pidfd)


def identify_peer(sock: socket.socket) -> PeerCredentials:
    """Everything the policy may ask about a freshly accepted peer, before any byte is read.

    SO_PEERCRED, SO_PEERGROUPS, then SO_PEERPIDFD-backed attestation of ``/proc/<pid>/exe``
    and start time (see :func:`attest_process`). When attestation succeeds the pidfd stays
    open in ``process`` (a :class:`PinnedProcess`), which the caller must close when the
    connection ends; otherwise it is closed before returning.
    Raises OSError only if SO_PEERCRED itself fails.
    """
    cred = peer_credentials(sock)
    groups = tuple(g for g in peer_groups(sock) if g != cred.gid)
    try:
        pidfd = peer_pidfd(sock)
    except PeerGone:
        return PeerCredentials(cred.pid, cred.uid, cred.gid, groups=groups,
                               attest_error="the peer exited before attestation")
    try:
        exe, start, error = attest_process(cred.pid, pidfd)
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        raise
    pinned = None
    if start is not None:
        pinned = PinnedProcess(cred.pid, pidfd, start)
    elif pidfd is not None:
        os.close(pidfd)
    return PeerCredentials(cred.pid, cred.uid, cred.gid, has_pidfd=pidfd is not None, groups=groups,
                           exe=exe, start_time=start, attest_error=error, process=pinned)
