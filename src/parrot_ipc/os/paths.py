"""Paths: default socket path, the runtime directory and the listening socket.

Hardened against the attacks in the Parrot IPC security guide (symlinked or foreign-owned
directories, world-readable sockets, a second broker on the same path); ``docs/protocol.md``,
Transport, gives the default paths.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Mapping
from typing import Final

from ..errors import StartupError

DEFAULT_SYSTEM_DIR: Final = "/run/parrot-mcp"
SOCKET_NAME: Final = "mcp.sock"


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
