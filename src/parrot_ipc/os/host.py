"""Read-only probes of the host for ``parrot-ipc doctor``: does a path exist, is it a file or a
directory, and the text of a small file (securityfs(5) entries such as
``/sys/kernel/security/lsm``).

Unlike :mod:`parrot_ipc.os.files`, these follow symlinks (stat(2)): they describe the host
(installed unit files, the kernel's LSM list), they do not decide who is trusted.
"""

from __future__ import annotations

import os
import stat
from typing import Final

#: The most :func:`read_text` reads, in bytes (securityfs files are a few KiB).
MAX_TEXT_BYTES: Final = 1024 * 1024


def _stat_mode(path: str) -> int | None:
    """``st_mode`` from stat(2) of ``path``, or None if it cannot be stat'ed."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def exists(path: str) -> bool:
    """True if ``path`` exists (stat(2), following symlinks; a dangling symlink is False)."""
    return _stat_mode(path) is not None


def is_file(path: str) -> bool:
    """True if ``path`` is a regular file or a symlink to one (stat(2))."""
    mode = _stat_mode(path)
    return mode is not None and stat.S_ISREG(mode)


def is_dir(path: str) -> bool:
    """True if ``path`` is a directory or a symlink to one (stat(2))."""
    mode = _stat_mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def read_text(path: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The first ``max_bytes`` bytes of ``path`` as UTF-8 text (undecodable bytes replaced).

    Raises:
        OSError: the file cannot be opened or read (ENOENT, EACCES, ...).
    """
    with open(path, "rb") as f:
        return f.read(max_bytes).decode(errors="replace")
