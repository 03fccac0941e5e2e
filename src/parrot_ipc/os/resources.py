"""The OS side of ``get_resource``: reading resource files safely from ``resources_dir``.

The broker core validates names and calls a reader; this module is that reader. A name is
checked again here (:func:`parrot_ipc.core.protocol.valid_resource_name`) before any
filesystem call, and is only ever used as one directory entry relative to a directory file
descriptor, opened with ``O_NOFOLLOW`` (a symlink is refused, not followed) and checked with
fstat(2) on the open descriptor, so there is no check-then-open race. The checks are the
config file's (:func:`parrot_ipc.os.files.owner_mode_problem`): owned by root or the
broker's user, not writable by group or others; the directory is checked the same way.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final

from ..core.protocol import valid_resource_name
from ..errors import ResourceRefused
from .files import owner_mode_problem

#: The largest resource served, in bytes (it must fit comfortably in one response frame).
MAX_RESOURCE_BYTES: Final = 256 * 1024


class ResourceDir:
    """A resource reader for the broker: ``reader(name)`` -> the file's bytes, or None.

    Args:
        path: the resources directory (``[server] resources_dir``).
        broker_uid: the broker's effective UID (default: ours).
        max_bytes: a larger file is refused.

    Returns None when the name is invalid, the directory does not exist, or it holds no
    such entry. Raises :class:`~parrot_ipc.errors.ResourceRefused` (message: why) for
    an entry that is a symlink or not a regular file, a file or directory with the wrong
    owner or mode, or a file over ``max_bytes``; and for other I/O errors.
    """

    def __init__(self, path: str, broker_uid: int | None = None, *, max_bytes: int = MAX_RESOURCE_BYTES) -> None:
        self.path = path
        self.broker_uid = os.geteuid() if broker_uid is None else broker_uid
        self.max_bytes = max_bytes

    def __call__(self, name: str) -> bytes | None:
        if not valid_resource_name(name):  # before any filesystem call
            return None
        try:
            dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise ResourceRefused(f"cannot open resources_dir {self.path}: {exc.strerror}") from None
        try:
            problem = owner_mode_problem(os.fstat(dfd), self.broker_uid)
            if problem:
                raise ResourceRefused(f"resources_dir {self.path} {problem}")
            return self._read(dfd, name)
        finally:
            os.close(dfd)

    def _read(self, dfd: int, name: str) -> bytes | None:
        where = f"{self.path}/{name}"
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            if exc.errno == errno.ELOOP:
                raise ResourceRefused(f"resource {where} is a symlink") from None
            raise ResourceRefused(f"cannot open resource {where}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ResourceRefused(f"resource {where} is not a regular file")
            problem = owner_mode_problem(st, self.broker_uid)
            if problem:
                raise ResourceRefused(f"resource {where} {problem}")
            if st.st_size > self.max_bytes:
                raise ResourceRefused(f"resource {where} is over {self.max_bytes} bytes")
            chunks, total = [], 0
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                total += len(chunk)
                if total > self.max_bytes:
                    raise ResourceRefused(f"resource {where} is over {self.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise ResourceRefused(f"cannot read resource {where}: {exc.strerror}") from None
        finally:
            os.close(fd)
