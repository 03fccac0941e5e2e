"""Files: opening private files safely (O_NOFOLLOW, then fstat(2) on the open descriptor)."""

from __future__ import annotations

import os
import stat

from ..errors import StartupError


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


def owner_mode_problem(st: os.stat_result, broker_uid: int) -> str | None:
    """Why a file that decides policy (the config, a resource) is unsafe, or None if it is fine.

    It must be owned by root or ``broker_uid`` and not writable by group or others.
    """
    if st.st_uid not in (0, broker_uid) or st.st_mode & 0o022:
        return (f"must be owned by root or uid {broker_uid} and not writable by group or "
                f"others; found uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}")
    return None
