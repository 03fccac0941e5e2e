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
from .files import FileRule, lstat_or_none, path_problem

DEFAULT_SYSTEM_DIR: Final = "/run/parrot-mcp"
SOCKET_NAME: Final = "mcp.sock"
#: The per-user fallback directory when ``$XDG_RUNTIME_DIR`` is unset (``su -``, ``runuser``):
#: ``/tmp/parrot-ipc-UID``, made 0700 and checked as tmux(1) checks ``/tmp/tmux-UID``.
FALLBACK_DIR_TEMPLATE: Final = "/tmp/parrot-ipc-{uid}"


# --------------------------------------------------------------------------- paths
def default_socket_path(euid: int | None = None, env: Mapping[str, str] | None = None) -> str:
    """The socket path a broker or client uses when none is given.

    Order (``docs/protocol.md``, Transport): ``$PARROT_IPC_DIR/mcp.sock``; for a non-root
    user with ``$XDG_RUNTIME_DIR`` set, ``$XDG_RUNTIME_DIR/parrot-mcp/mcp.sock``; for a non-root
    user without it, ``/tmp/parrot-ipc-UID/mcp.sock`` (:data:`FALLBACK_DIR_TEMPLATE`); for
    root, ``/run/parrot-mcp/mcp.sock``. Brokers and clients use this one rule.
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if env.get("PARROT_IPC_DIR"):
        return os.path.join(env["PARROT_IPC_DIR"], SOCKET_NAME)
    if euid != 0:
        if env.get("XDG_RUNTIME_DIR"):
            return os.path.join(env["XDG_RUNTIME_DIR"], "parrot-mcp", SOCKET_NAME)
        return os.path.join(FALLBACK_DIR_TEMPLATE.format(uid=euid), SOCKET_NAME)
    return os.path.join(DEFAULT_SYSTEM_DIR, SOCKET_NAME)


def is_fallback_path(socket_path: str, euid: int | None = None) -> bool:
    """True if ``socket_path`` lies in our per-user fallback directory ``/tmp/parrot-ipc-UID``
    (``euid`` default: our effective UID), which anyone could have made first in ``/tmp``."""
    euid = os.geteuid() if euid is None else euid
    return os.path.dirname(os.path.abspath(socket_path)) == FALLBACK_DIR_TEMPLATE.format(uid=euid)


def client_dir_problem(socket_path: str, euid: int | None = None) -> str | None:
    """Before a client connects to ``socket_path`` in the fallback directory: what makes that
    directory unsafe (not a directory of ours with mode 0700, :func:`runtime_dir_problem`), or
    None. A missing directory, or a path elsewhere, is None (connect(2) then says what it says).

    tmux(1) refuses ``/tmp/tmux-UID`` the same way: another user could have created it first
    and listen there for our tokens and mail. Never raises (an lstat(2) failure is the answer).
    """
    if not is_fallback_path(socket_path, euid):
        return None
    directory = os.path.dirname(os.path.abspath(socket_path))
    try:
        if lstat_or_none(directory) is None:
            return None
        return runtime_dir_problem(directory, euid)
    except OSError as exc:
        return f"{directory}: {exc.strerror}"



# --------------------------------------------------------------------------- runtime directory
def runtime_dir_rule(euid: int, group_gid: int | None = None) -> FileRule:
    """The rule for the runtime directory: a directory owned by ``euid`` with mode exactly
    0700, or 0750 and group ``group_gid`` when a socket group is configured."""
    mode = 0o700 if group_gid is None else 0o750
    return FileRule("dir", frozenset({euid}), 0, exact_mode=mode, group=group_gid, what="runtime directory")


def runtime_dir_problem(path: str, euid: int | None = None, group_gid: int | None = None) -> str | None:
    """What makes ``path`` unsafe as a runtime directory, or None if it is safe. Changes nothing.

    Safe means :func:`runtime_dir_rule`: a real directory (checked with lstat(2), so a symlink
    is refused), owned by ``euid`` (default: our effective UID), with mode exactly 0700 (0750
    and group ``group_gid`` when a socket group is configured). The answer is one line naming
    the path, what it must be and what was found (:func:`parrot_ipc.os.files.path_problem`).
    Used by :func:`ensure_runtime_dir` and ``parrot-ipc doctor``.

    Raises:
        OSError: lstat(2) failed other than with ENOENT (e.g. EACCES on a parent).
    """
    euid = os.geteuid() if euid is None else euid
    return path_problem(path, runtime_dir_rule(euid, group_gid))


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

    It must be a socket (unix(7); checked with lstat(2), so a symlink is refused) owned by
    ``euid`` (default: our effective UID), and, if ``mode`` is given, have exactly that mode
    (e.g. ``0o600``). A missing file is reported as such. The answer is one line
    (:func:`parrot_ipc.os.files.path_problem`). Used by :func:`bind_listener` (which replaces
    a stale socket of ours whatever its mode) and by ``parrot-ipc doctor``.

    Raises:
        OSError: lstat(2) failed other than with ENOENT.
    """
    euid = os.geteuid() if euid is None else euid
    return path_problem(path, FileRule("socket", frozenset({euid}), 0, exact_mode=mode, what="socket path"))


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
    if lstat_or_none(path) is not None:
        problem = socket_file_problem(path, euid)
        if problem is not None:
            raise StartupError(f"refusing to start: not a socket of ours: {problem}")
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
