"""Files: the one safe-open helper, and the owner/mode rules every caller checks with it.

Every file or directory whose owner and mode matter (the config, secrets, the session file,
the state directory and database, the audit log, resources, the runtime directory) goes
through :func:`open_checked` (open, then check the open descriptor) or :func:`problem` (check a
``stat_result`` the caller already has, e.g. from lstat(2)). The rules:

- ``O_NOFOLLOW``: a symlink in the last component is refused (open(2): ELOOP);
- ``O_NONBLOCK`` on open: a FIFO in the file's place cannot hang the caller (fifo(7));
- fstat(2) on the descriptor, never stat-then-open (no TOCTOU window);
- type (regular file or directory), owner (a set of UIDs), forbidden mode bits, and for
  regular files ``st_nlink == 1`` (a hard link to someone else's file is refused).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Literal

from ..errors import StartupError, UnsafeFile


@dataclass(frozen=True, slots=True)
class FileRule:
    """What a path must be.

    Attributes:
        kind: ``"file"`` (a regular file) or ``"dir"`` (a directory).
        owners: the UIDs allowed to own it.
        forbidden_mode: permission bits that must be clear, e.g. ``0o077`` (private) or
            ``0o022`` (not writable by group or others).
        exact_mode: if set, the permission bits must equal this (e.g. ``0o700``).
        single_link: regular files only: require ``st_nlink == 1``.
        what: the words the error uses for it, e.g. ``"session file"``.
    """

    kind: Literal["file", "dir"]
    owners: frozenset[int]
    forbidden_mode: int = 0o077
    exact_mode: int | None = None
    single_link: bool = True
    what: str = "file"


def describe(st: os.stat_result) -> str:
    """``st`` in words: kind, owner uid, mode, e.g. ``a directory owned by uid 0 with mode 0755``."""
    kind = ("symlink" if stat.S_ISLNK(st.st_mode) else "directory" if stat.S_ISDIR(st.st_mode)
            else "socket" if stat.S_ISSOCK(st.st_mode) else "FIFO" if stat.S_ISFIFO(st.st_mode)
            else "regular file" if stat.S_ISREG(st.st_mode) else "special file")
    return f"a {kind} owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}"


def _owners_text(owners: frozenset[int]) -> str:
    ids = sorted(owners)
    return "uid " + " or ".join(str(u) for u in ids) if ids else "nobody"


def problem(st: os.stat_result, rule: FileRule) -> str | None:
    """Why ``st`` breaks ``rule`` (one clause, for an error message), or None if it is fine.

    Args:
        st: from fstat(2) on an open descriptor (or lstat(2), for a path that is not opened).
        rule: what it must be.
    """
    mode = stat.S_IMODE(st.st_mode)
    is_right_kind = stat.S_ISREG(st.st_mode) if rule.kind == "file" else stat.S_ISDIR(st.st_mode)
    expected = "a regular file" if rule.kind == "file" else "a directory"
    bad = (not is_right_kind or st.st_uid not in rule.owners or mode & rule.forbidden_mode
           or (rule.exact_mode is not None and mode != rule.exact_mode))
    if bad:
        want = f"{expected} owned by {_owners_text(rule.owners)}"
        if rule.exact_mode is not None:
            want += f" with mode {rule.exact_mode:04o}"
        elif rule.forbidden_mode & 0o077 == 0o077:
            want += " and private to its owner (mode 0600 or 0700)"
        elif rule.forbidden_mode & 0o022:
            want += " and not writable by group or others"
        return f"must be {want}; found {describe(st)}"
    if rule.kind == "file" and rule.single_link and st.st_nlink != 1:
        return f"must have exactly one hard link; found {st.st_nlink}"
    return None


def open_checked(path: str | os.PathLike[str], rule: FileRule, *, flags: int = os.O_RDONLY,
                 dir_fd: int | None = None, create_mode: int | None = None) -> int:
    """Open ``path`` safely and check the open descriptor against ``rule``. Returns the fd.

    ``O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK`` are always added (``O_DIRECTORY`` for a ``"dir"``
    rule); ``O_NONBLOCK`` is cleared again on a regular file once it is known to be one, so
    reads and writes block as usual. With ``create_mode``, ``O_CREAT`` is added and a new file
    gets that mode (under the caller's umask).

    Args:
        path: the path, relative to ``dir_fd`` when given (openat(2)).
        rule: what the opened file must be.
        flags: the access flags (``os.O_RDONLY``, ``os.O_WRONLY | os.O_APPEND``, ...).
        dir_fd: a directory descriptor ``path`` is relative to.
        create_mode: create the file with this mode if it is missing.

    Raises:
        OSError: open(2) failed (ENOENT, EACCES, ELOOP for a symlink, ...); nothing is left open.
        UnsafeFile: it opened but breaks ``rule``; ``str(exc)`` names the path and the problem,
            and the descriptor is closed.
    """
    extra = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if rule.kind == "dir":
        extra |= os.O_DIRECTORY
    if create_mode is not None:
        extra |= os.O_CREAT
    fd = os.open(path, flags | extra, 0o600 if create_mode is None else create_mode, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        why = problem(st, rule)
        if why is not None:
            raise UnsafeFile(f"{rule.what} {os.fspath(path)} {why}")
        if rule.kind == "file":
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_file(path: str, euid: int | None = None, *, max_bytes: int = 65536) -> bytes:
    """Read a secret file that must be a regular file owned by ``euid`` with mode 0600 (or 0400).

    Returns at most ``max_bytes`` bytes. Uses :func:`open_checked`.

    Raises:
        StartupError: the file cannot be opened or breaks the rule (one line: path, owner, mode).
    """
    euid = os.geteuid() if euid is None else euid
    rule = FileRule("file", frozenset({euid}), 0o077, what="secret file")
    try:
        fd = open_checked(path, rule)
    except OSError as exc:
        raise StartupError(f"refusing to start: cannot open secret file {path}: {exc.strerror}") from None
    except UnsafeFile as exc:
        raise StartupError(f"refusing to start: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read(max_bytes)


def policy_file_rule(broker_uid: int, what: str, kind: Literal["file", "dir"] = "file") -> FileRule:
    """The rule for a file that decides policy (the config, a resource) or its directory:
    owned by root or ``broker_uid``, not writable by group or others."""
    return FileRule(kind, frozenset({0, broker_uid}), 0o022, single_link=kind == "file", what=what)


def owner_mode_problem(st: os.stat_result, broker_uid: int) -> str | None:
    """Why a file that decides policy (the config, a resource) is unsafe, or None if it is fine.

    It must be owned by root or ``broker_uid`` and not writable by group or others (type and
    link count are the caller's to check; see :func:`policy_file_rule` for the whole rule).
    """
    if st.st_uid not in (0, broker_uid) or st.st_mode & 0o022:
        return (f"must be owned by root or uid {broker_uid} and not writable by group or "
                f"others; found uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}")
    return None
