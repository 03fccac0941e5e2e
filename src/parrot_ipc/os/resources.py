"""The OS side of ``get_resource``: reading resource files safely from ``resources_dir``.

The broker core validates names and calls a reader; this module is that reader. A name is
checked again here (:func:`parrot_ipc.core.protocol.valid_resource_name`) before any
filesystem call, and is only ever used as one directory entry relative to a directory file
descriptor (openat(2)).

The directory is opened once (at start, and again on SIGHUP: :meth:`ResourceDir.reopen`) and
pinned by its descriptor, so renaming or replacing it, or anything above it, later changes
nothing that is served (issue 13, finding 4). Opening it walks the path from ``/`` one
component at a time with ``O_NOFOLLOW`` (openat(2) relative to the previous component), and
every ancestor must be owned by root or the broker's user and not writable by group or
others, unless it is a sticky directory such as ``/tmp`` (inode(7): there nobody but an
entry's owner may rename or remove it, and the entry below is checked in turn). Symlinks
among the ancestors are resolved once, first (``/var/run`` is a symlink on most systems); the
resolved path is then walked without following any. The directory itself and each file go
through :func:`parrot_ipc.os.files.open_checked` with
:func:`parrot_ipc.os.files.policy_file_rule` (the config file's rule): ``O_NOFOLLOW``,
fstat(2) on the open descriptor, owned by root or the broker's user, not writable by group or
others, and for the file: a regular file with one hard link.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from ..core.protocol import valid_resource_name
from ..errors import ResourceRefused, UnsafeFile
from .files import FileRule, open_checked, policy_file_rule, problem, read_checked

#: The largest resource served, in bytes (it must fit comfortably in one response frame).
MAX_RESOURCE_BYTES: Final = 256 * 1024


def open_pinned_dir(path: str, broker_uid: int) -> int:
    """Open the directory ``path`` by walking it from ``/`` (see the module docstring); the fd.

    Raises:
        UnsafeFile: an ancestor or the directory breaks its rule (a symlink, not a directory,
            the wrong owner, writable by group or others and not sticky).
        OSError: a component is missing (ENOENT), or not a directory (ENOTDIR), or not
            searchable (EACCES).
    """
    head, tail = os.path.split(os.path.abspath(path))
    real = os.path.realpath(head)
    if os.path.lexists(real) and not os.path.isdir(real):  # "no such directory", as open(2) says
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), real)
    parts = [p for p in real.split("/") if p]
    owner_only = FileRule("dir", frozenset({0, broker_uid}), 0, what="resources_dir ancestor")
    strict = policy_file_rule(broker_uid, "resources_dir ancestor", "dir")
    fd = open_checked("/", owner_only, flags=os.O_PATH)
    shown = ""
    try:
        for part in parts:
            shown += "/" + part
            _check_ancestor(fd, strict, shown[: -len(part) - 1] or "/")
            nxt = open_checked(part, owner_only, flags=os.O_PATH, dir_fd=fd, name=shown)
            os.close(fd)
            fd = nxt
        _check_ancestor(fd, strict, shown or "/")
        return open_checked(tail, policy_file_rule(broker_uid, "resources_dir", "dir"), dir_fd=fd, name=path)
    finally:
        os.close(fd)


def _check_ancestor(fd: int, rule: FileRule, shown: str) -> None:
    """Raise UnsafeFile if the open directory ``fd`` is writable by group or others and not
    sticky (its owner was checked when it was opened)."""
    st = os.fstat(fd)
    if st.st_mode & stat.S_ISVTX:
        return
    why = problem(st, rule)
    if why is not None:
        raise UnsafeFile(f"{rule.what} {shown} {why}")


class ResourceDir:
    """A resource reader for the broker: ``reader(name)`` -> the file's bytes, or None.

    Args:
        path: the resources directory (``[server] resources_dir``); itself opened with
            ``O_NOFOLLOW``, so a symlink there is refused.
        broker_uid: the broker's effective UID (default: ours).
        max_bytes: a larger file is refused.

    The directory is opened by :meth:`reopen` (the daemon calls it at start and on SIGHUP;
    otherwise the first valid name opens it) and kept open until :meth:`close`.

    Returns None when the name is invalid, the directory did not exist when it was opened
    (ENOENT, or ENOTDIR through a non-directory parent), or it holds no such entry. Raises
    :class:`~parrot_ipc.errors.ResourceRefused` (message: why) for an entry, a directory or
    an ancestor that is a symlink or of the wrong type, has the wrong owner or mode or more
    than one hard link, a file over ``max_bytes``; and for other I/O errors.
    """

    def __init__(self, path: str, broker_uid: int | None = None, *, max_bytes: int = MAX_RESOURCE_BYTES) -> None:
        self.path = path
        self.broker_uid = os.geteuid() if broker_uid is None else broker_uid
        self.max_bytes = max_bytes
        self._dfd: int | None = None
        self._refused: str | None = None
        self._opened = False

    def __call__(self, name: str) -> bytes | None:
        if not valid_resource_name(name):  # before any filesystem call
            return None
        if not self._opened:
            self.reopen()
        if self._refused is not None:
            raise ResourceRefused(self._refused)
        if self._dfd is None:
            return None
        return self._read(self._dfd, name)

    def reopen(self) -> str | None:
        """(Re)open and check the directory, replacing the pinned one. Returns why it is
        refused (one line, also raised by every later call until the next reopen), or None
        (opened, or absent: then every name is None)."""
        try:
            dfd, refused = open_pinned_dir(self.path, self.broker_uid), None
        except UnsafeFile as exc:
            dfd, refused = None, str(exc)
        except OSError as exc:
            missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)
            dfd, refused = None, None if missing else f"cannot open resources_dir {self.path}: {exc.strerror}"
        self.close()
        self._dfd, self._refused, self._opened = dfd, refused, True
        return refused

    def close(self) -> None:
        """Close the pinned directory (idempotent); the next call opens it again."""
        if self._dfd is not None:
            os.close(self._dfd)
        self._dfd, self._opened = None, False

    def __del__(self) -> None:
        self.close()

    def _read(self, dfd: int, name: str) -> bytes | None:
        """The entry ``name`` of the directory ``dfd``, checked and read; None if absent."""
        where = f"{self.path}/{name}"
        rule = policy_file_rule(self.broker_uid, "resource")
        try:
            return read_checked(name, rule, max_bytes=self.max_bytes, dir_fd=dfd, name=where)
        except UnsafeFile as exc:
            raise ResourceRefused(str(exc)) from None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ResourceRefused(f"cannot read resource {where}: {exc.strerror}") from None
