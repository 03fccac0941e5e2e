"""The OS side of ``get_resource``: reading resource files safely from ``resources_dir``.

The broker core validates names and calls a reader; this module is that reader. A name is
checked again here (:func:`parrot_ipc.core.protocol.valid_resource_name`) before any
filesystem call, and is only ever used as one directory entry relative to a directory file
descriptor (openat(2)). Both the directory and the file go through
:func:`parrot_ipc.os.files.open_checked` with :func:`parrot_ipc.os.files.policy_file_rule`
(the config file's rule): ``O_NOFOLLOW`` (a symlink is refused, not followed), fstat(2) on
the open descriptor (no check-then-open race), owned by root or the broker's user, not
writable by group or others, and for the file: a regular file with one hard link.
"""

from __future__ import annotations

import errno
import os
from typing import Final

from ..core.protocol import valid_resource_name
from ..errors import ResourceRefused, UnsafeFile
from .files import open_checked, policy_file_rule, read_checked

#: The largest resource served, in bytes (it must fit comfortably in one response frame).
MAX_RESOURCE_BYTES: Final = 256 * 1024


class ResourceDir:
    """A resource reader for the broker: ``reader(name)`` -> the file's bytes, or None.

    Args:
        path: the resources directory (``[server] resources_dir``); itself opened with
            ``O_NOFOLLOW``, so a symlink there is refused.
        broker_uid: the broker's effective UID (default: ours).
        max_bytes: a larger file is refused.

    Returns None when the name is invalid, the directory does not exist (ENOENT, or ENOTDIR
    through a non-directory parent), or it holds no such entry. Raises
    :class:`~parrot_ipc.errors.ResourceRefused` (message: why) for an entry or directory that
    is a symlink or of the wrong type, has the wrong owner or mode or more than one hard
    link, a file over ``max_bytes``; and for other I/O errors.
    """

    def __init__(self, path: str, broker_uid: int | None = None, *, max_bytes: int = MAX_RESOURCE_BYTES) -> None:
        self.path = path
        self.broker_uid = os.geteuid() if broker_uid is None else broker_uid
        self.max_bytes = max_bytes

    def __call__(self, name: str) -> bytes | None:
        if not valid_resource_name(name):  # before any filesystem call
            return None
        dfd = self._open_dir()
        if dfd is None:
            return None
        try:
            return self._read(dfd, name)
        finally:
            os.close(dfd)

    def _open_dir(self) -> int | None:
        """The checked directory's fd, or None if it does not exist."""
        try:
            return open_checked(self.path, policy_file_rule(self.broker_uid, "resources_dir", "dir"))
        except UnsafeFile as exc:
            raise ResourceRefused(str(exc)) from None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise ResourceRefused(f"cannot open resources_dir {self.path}: {exc.strerror}") from None

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
