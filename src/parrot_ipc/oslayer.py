"""The OS layer: every Linux call the broker makes, as plain functions.

- Peer credentials: SO_PEERCRED (``struct ucred``: pid, uid, gid; unix(7), socket(7)) and
  SO_PEERPIDFD (Linux 6.5+, option 77; missing from Python 3.11's :mod:`socket`).
- The runtime directory and the listening socket, hardened against the attacks in the Parrot
  IPC security guide (symlinked or foreign-owned directories, world-readable sockets, a second
  broker on the same path).
- Default paths (``docs/protocol.md``, Transport).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import struct
from collections.abc import Mapping
from typing import Final

from .core.policy import PeerCredentials

SO_PEERPIDFD: Final = getattr(socket, "SO_PEERPIDFD", 77)
SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED: Final = struct.Struct("3i")
DEFAULT_SYSTEM_DIR: Final = "/run/parrot-mcp"
SOCKET_NAME: Final = "mcp.sock"


class StartupError(Exception):
    """The broker must not start. ``str(exc)`` is one line for the operator: path and cause."""


# --------------------------------------------------------------------------- paths
def default_socket_path(euid: int | None = None, env: Mapping[str, str] | None = None) -> str:
    """The socket path a broker or client uses when none is given.

    Order (``docs/protocol.md``): ``$PARROT_IPC_DIR/mcp.sock``; for a non-root user with
    ``$XDG_RUNTIME_DIR`` set, ``$XDG_RUNTIME_DIR/parrot-mcp/mcp.sock``; else
    ``/run/parrot-mcp/mcp.sock``.
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if env.get("PARROT_IPC_DIR"):
        return os.path.join(env["PARROT_IPC_DIR"], SOCKET_NAME)
    if euid != 0 and env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "parrot-mcp", SOCKET_NAME)
    return os.path.join(DEFAULT_SYSTEM_DIR, SOCKET_NAME)


# --------------------------------------------------------------------------- peer credentials
def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Read SO_PEERCRED from a connected AF_UNIX socket.

    The kernel records the credentials at connect(2) time, so they describe the process that
    connected, whatever it sends later. Raises OSError if the socket has no peer.
    """
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


class PeerGone(Exception):
    """The peer process exited (and was reaped) before we could pin it."""


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


def identify_peer(sock: socket.socket) -> PeerCredentials:
    """Everything the policy may ask about a freshly accepted peer, before any byte is read.

    SO_PEERCRED, SO_PEERGROUPS, then SO_PEERPIDFD-backed attestation of ``/proc/<pid>/exe``
    and start time (see :func:`attest_process`). The pidfd is closed before returning.
    Raises OSError only if SO_PEERCRED itself fails.
    """
    cred = peer_credentials(sock)
    try:
        pidfd = peer_pidfd(sock)
    except PeerGone:
        return PeerCredentials(cred.pid, cred.uid, cred.gid, groups=tuple(g for g in peer_groups(sock) if g != cred.gid),
                               attest_error="the peer exited before attestation")
    try:
        exe, start, error = attest_process(cred.pid, pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return PeerCredentials(cred.pid, cred.uid, cred.gid, has_pidfd=pidfd is not None,
                           groups=tuple(g for g in peer_groups(sock) if g != cred.gid),
                           exe=exe, start_time=start, attest_error=error)


def read_private_file(path: str, euid: int | None = None, *, max_bytes: int = 65536) -> bytes:
    """Read a secret file that must be a regular file owned by ``euid`` with mode 0600 (or 0400).

    Opened with O_NOFOLLOW and checked with fstat(2) on the open descriptor (no
    check-then-open race). Raises :class:`StartupError` naming the path, owner and mode.
    """
    euid = os.geteuid() if euid is None else euid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StartupError(f"refusing to start: cannot open secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != euid or st.st_mode & 0o077:
            raise StartupError(
                f"refusing to start: secret file {path} must be a regular file owned by uid {euid} "
                f"with mode 0600; found uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"
            )
        return f.read(max_bytes)


def raise_nofile_limit(wanted: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit toward ``wanted`` file descriptors (getrlimit(2)).

    Returns ``(soft, hard)`` after the change; the soft limit never exceeds the hard one, so
    a caller compares ``soft`` with ``wanted`` to know whether it got what it asked for.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


# --------------------------------------------------------------------------- runtime directory
def describe(st: os.stat_result) -> str:
    """``st`` (from lstat(2)) in words: kind, owner uid, mode, e.g. ``a directory owned by uid 0 with mode 0755``."""
    kind = ("symlink" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode)
            else "socket" if stat.S_ISSOCK(st.st_mode) else "non-directory")
    return f"a {kind} owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}"


def runtime_dir_problem(path: str, euid: int | None = None, group_gid: int | None = None) -> str | None:
    """What makes ``path`` unsafe as a runtime directory, or None if it is safe. Changes nothing.

    Safe means: a real directory (checked with lstat(2), so a symlink is refused), owned by
    ``euid`` (default: our effective UID), with mode exactly 0700 (0750 and group
    ``group_gid`` when a socket group is configured). The answer is one line naming the path,
    the owner and the mode found. Used by :func:`ensure_runtime_dir` and ``parrot-ipc doctor``.
    """
    euid = os.geteuid() if euid is None else euid
    mode = 0o700 if group_gid is None else 0o750
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"runtime directory {path} does not exist"
    wrong_group = group_gid is not None and st.st_gid != group_gid
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or stat.S_IMODE(st.st_mode) != mode or wrong_group:
        want = f"mode {mode:04o}" + ("" if group_gid is None else f" and group {group_gid}")
        return (f"runtime directory {path} must be a directory owned by uid {euid} with {want}; "
                f"found {describe(st)}" + (f", group {st.st_gid}" if group_gid is not None else ""))
    return None


def ensure_runtime_dir(path: str, euid: int | None = None, group_gid: int | None = None) -> None:
    """Create ``path`` with mode 0700 (0750 and group ``group_gid`` when a socket group is
    configured), or check that the existing one is exactly that (:func:`runtime_dir_problem`).

    The parent must exist. Raises :class:`StartupError` naming the path, the owner and the mode
    found.
    """
    euid = os.geteuid() if euid is None else euid
    mode = 0o700 if group_gid is None else 0o750
    try:
        os.mkdir(path, 0o700)
        if group_gid is not None:
            os.chown(path, -1, group_gid)
        os.chmod(path, mode)  # mkdir's mode is filtered by the umask; make it exact
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise StartupError(f"refusing to start: the parent of runtime directory {path} does not exist") from None
    except OSError as exc:
        raise StartupError(f"refusing to start: cannot create runtime directory {path}: {exc.strerror}") from None
    problem = runtime_dir_problem(path, euid, group_gid)
    if problem is not None:
        raise StartupError(f"refusing to start: {problem}")


# --------------------------------------------------------------------------- listening socket
def socket_file_problem(path: str, euid: int | None = None, mode: int | None = None) -> str | None:
    """What is wrong with the file at ``path`` as our socket, or None. Changes nothing.

    It must be a socket (lstat(2): a symlink is refused) owned by ``euid`` (default: our
    effective UID), and, if ``mode`` is given, have exactly that mode (e.g. ``0o600``). A
    missing file is reported as such. Used by :func:`bind_listener` (which replaces a stale
    socket of ours whatever its mode) and by ``parrot-ipc doctor``.
    """
    euid = os.geteuid() if euid is None else euid
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != euid:
        return f"{path} exists and is not a socket of ours ({describe(st)})"
    if mode is not None and stat.S_IMODE(st.st_mode) != mode:
        return f"socket {path} must have mode {mode:04o}; found {describe(st)}"
    return None


def _probe(path: str) -> bool:
    """True if something accepts connections on ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True


def bind_listener(path: str, backlog: int = 4096, euid: int | None = None,
                  group_gid: int | None = None) -> tuple[socket.socket, int]:
    """Bind and listen on an AF_UNIX stream socket at ``path`` with mode 0600 (0660 and group
    ``group_gid`` when a socket group is configured).

    A live broker already answering on ``path`` is refused. A stale socket file we own
    (connect refused) is replaced. Anything else at ``path`` (a regular file, a symlink, a
    socket of another user) is refused, never unlinked. Binding happens under umask 0o077,
    so the socket is never more open than 0600, even for an instant.

    Returns the listening socket and the socket file's inode (see :func:`remove_socket`).
    Raises :class:`StartupError`.
    """
    euid = os.geteuid() if euid is None else euid
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        problem = socket_file_problem(path, euid)
        if problem is not None:
            raise StartupError(f"refusing to start: {problem}")
        try:
            live = _probe(path)
        except OSError as exc:
            raise StartupError(f"refusing to start: cannot probe {path}: {exc.strerror}") from None
        if live:
            raise StartupError(f"refusing to start: a broker is already listening on {path}")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"refusing to start: cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    if group_gid is not None:
        os.chown(path, -1, group_gid)
    os.chmod(path, 0o600 if group_gid is None else 0o660)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock, os.lstat(path).st_ino


def remove_socket(path: str, inode: int) -> None:
    """Unlink ``path`` if it is still the socket we bound: a socket with the same inode.

    Anything else found there (a file or socket that replaced ours) is left alone.
    """
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
