"""Files: the one safe-open helper, and the owner/mode rules every caller checks with it.

Every file or directory whose owner and mode matter (the config, secrets, the session file,
the state directory and database, the audit log, resources, the runtime directory, the
socket) goes through :func:`open_checked` (open, then check the open descriptor), through
:func:`read_checked` (the same, then read it), or, for a path that is not opened (a directory
we only check, a socket), through :func:`path_problem` / :func:`problem` on lstat(2). The rules:

- ``O_NOFOLLOW``: a symlink in the last component is refused (open(2): ELOOP), never followed;
- ``O_NONBLOCK`` on open: a FIFO in the file's place cannot hang the caller (fifo(7)), and
  ``O_NOCTTY``: a terminal in its place does not become our controlling terminal (open(2));
- fstat(2) on the descriptor, never stat-then-open (no TOCTOU window);
- type (regular file, directory, socket), owner (a set of UIDs), forbidden or exact mode bits,
  optionally the group, and for regular files ``st_nlink == 1`` (a hard link to someone else's
  file is refused).

Every refusal is :class:`~parrot_ipc.errors.UnsafeFile` whose text names the path, what it must
be and what was found (:func:`describe`); ``OSError`` is left for "nothing there" (ENOENT) and
"not allowed" (EACCES) and the like.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from typing import Literal

from ..errors import StartupError, UnsafeFile

Kind = Literal["file", "dir", "socket"]

_EXPECTED: dict[str, str] = {"file": "a regular file", "dir": "a directory", "socket": "a socket"}
_IS_KIND = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "socket": stat.S_ISSOCK}
_READ_CHUNK = 65536
#: open(2) errors that can mean "the last component is the wrong kind" (see :func:`_wrong_kind`).
_KIND_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO})


@dataclass(frozen=True, slots=True)
class FileRule:
    """What a path must be.

    Attributes:
        kind: ``"file"`` (a regular file), ``"dir"`` (a directory) or ``"socket"`` (an AF_UNIX
            socket file, unix(7); only for :func:`problem` / :func:`path_problem`, since
            open(2) of a socket fails with ENXIO).
        owners: the UIDs allowed to own it (``st_uid``).
        forbidden_mode: permission bits that must be clear, e.g. ``0o077`` (private) or
            ``0o022`` (not writable by group or others); 0 for none.
        exact_mode: if set, the permission bits (``S_IMODE``) must equal this (e.g. ``0o700``).
        group: if set, ``st_gid`` must equal this GID (a socket group, for example).
        single_link: regular files only: require ``st_nlink == 1``.
        what: the words the error uses for it, e.g. ``"session file"``.
    """

    kind: Kind
    owners: frozenset[int]
    forbidden_mode: int = 0o077
    exact_mode: int | None = None
    single_link: bool = True
    what: str = "file"
    group: int | None = None


def kind_of(st: os.stat_result) -> str:
    """The file type of ``st`` in words (inode(7)): ``"regular file"``, ``"directory"``,
    ``"symlink"``, ``"socket"``, ``"FIFO"`` or ``"special file"`` (a device)."""
    mode = st.st_mode
    for test, word in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISLNK, "symlink"), (stat.S_ISSOCK, "socket"), (stat.S_ISFIFO, "FIFO")):
        if test(mode):
            return word
    return "special file"


def describe(st: os.stat_result) -> str:
    """``st`` in words: kind, owner uid, mode, e.g. ``a directory owned by uid 0 with mode 0755``."""
    return f"a {kind_of(st)} owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}"


def _owners_text(owners: frozenset[int]) -> str:
    """``root or uid 1000`` for {0, 1000}, ``root or uid 0`` for {0}, ``uid 1000`` for {1000}."""
    if not owners:
        return "nobody"
    others = " or ".join(str(u) for u in sorted(owners) if u != 0) or "0"
    return f"root or uid {others}" if 0 in owners else f"uid {others}"


def _mode_text(rule: FileRule) -> str:
    """The mode (and group) part of what ``rule`` wants, e.g. `` and not writable by group or others``."""
    if rule.exact_mode is not None:
        text = f" with mode {rule.exact_mode:04o}"
    elif rule.forbidden_mode & 0o077 == 0o077:
        text = " and private to its owner (mode 0600 for a file, 0700 for a directory)"
    elif rule.forbidden_mode & 0o022:
        text = " and not writable by group or others"
    else:
        text = ""
    return text if rule.group is None else f"{text} and group {rule.group}"


def _owner_mode_ok(st: os.stat_result, rule: FileRule) -> bool:
    """True if ``st``'s owner, permission bits and group are what ``rule`` allows."""
    mode = stat.S_IMODE(st.st_mode)
    return (st.st_uid in rule.owners and not mode & rule.forbidden_mode
            and (rule.exact_mode is None or mode == rule.exact_mode)
            and (rule.group is None or st.st_gid == rule.group))


def problem(st: os.stat_result, rule: FileRule) -> str | None:
    """Why ``st`` breaks ``rule`` (one clause, to follow ``"<what> <path> "``), or None if fine.

    The clauses, checked in this order:

    - wrong type: ``is a symlink owned by uid 0 with mode 0777, not a directory``;
    - wrong owner, mode or group: ``must be owned by root or uid 1000 and not writable by
      group or others; found a regular file owned by uid 1000 with mode 0664``;
    - a regular file with ``st_nlink != 1``: ``must have exactly one hard link; found 2``.

    Modes are the permission bits, ``S_IMODE(st_mode)``, in octal (inode(7)).

    Args:
        st: from fstat(2) on an open descriptor, or lstat(2) for a path that is not opened
            (stat(2), which follows symlinks, would hide a symlink).
        rule: what it must be.
    """
    found = describe(st) + ("" if rule.group is None else f", group {st.st_gid}")
    if not _IS_KIND[rule.kind](st.st_mode):
        return f"is {found}, not {_EXPECTED[rule.kind]}"
    if not _owner_mode_ok(st, rule):
        return f"must be owned by {_owners_text(rule.owners)}{_mode_text(rule)}; found {found}"
    if rule.kind == "file" and rule.single_link and st.st_nlink != 1:
        return f"must have exactly one hard link; found {st.st_nlink}"
    return None


def lstat_or_none(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> os.stat_result | None:
    """lstat(2) of ``path`` (a symlink is reported as itself), or None if nothing is there.

    Raises:
        OSError: other than ENOENT (EACCES, ENOTDIR for a path through a non-directory, ...).
    """
    try:
        return os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def path_problem(path: str | os.PathLike[str], rule: FileRule, *, dir_fd: int | None = None) -> str | None:
    """What makes ``path`` break ``rule``, checked with lstat(2) without opening it, or None.

    For paths that are only checked, never opened here: a runtime directory, a socket file.
    The answer is one line: ``"<what> <path> does not exist"`` or ``"<what> <path> <clause>"``
    (:func:`problem`). Changes nothing.

    Raises:
        OSError: lstat(2) failed other than with ENOENT.
    """
    st = lstat_or_none(path, dir_fd=dir_fd)
    if st is None:
        return f"{rule.what} {os.fspath(path)} does not exist"
    why = problem(st, rule)
    return None if why is None else f"{rule.what} {os.fspath(path)} {why}"


def _wrong_kind(exc: OSError, path: str | os.PathLike[str], rule: FileRule, dir_fd: int | None,
                shown: str) -> UnsafeFile | None:
    """An UnsafeFile for an open(2) that failed because the last component is the wrong kind.

    ELOOP (a symlink under ``O_NOFOLLOW``), ENOTDIR (a non-directory under ``O_DIRECTORY``,
    which a symlink also gives), EISDIR (a directory opened for writing) or ENXIO (a socket,
    or a FIFO opened for writing with no reader): lstat(2) says what is there. None if lstat
    shows nothing wrong with the last component (the error came from elsewhere).
    """
    if exc.errno not in _KIND_ERRNOS:
        return None
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except OSError:
        return None
    why = problem(st, rule) if not _IS_KIND[rule.kind](st.st_mode) else None
    return None if why is None else UnsafeFile(f"{rule.what} {shown} {why}")


def open_checked(path: str | os.PathLike[str], rule: FileRule, *, flags: int = os.O_RDONLY,
                 dir_fd: int | None = None, create_mode: int | None = None, name: str | None = None) -> int:
    """Open ``path`` safely and check the open descriptor against ``rule``. Returns the fd.

    ``O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY`` are always added (``O_DIRECTORY`` for a
    ``"dir"`` rule); ``O_NONBLOCK`` is cleared again on a regular file once it is known to be
    one, so reads and writes block as usual. With ``create_mode``, ``O_CREAT`` is added and a
    new file gets that mode (under the caller's umask). The caller owns the returned fd and
    must close it. Sources: open(2) (``O_NOFOLLOW``, ``O_NONBLOCK`` on a FIFO, ``O_NOCTTY``),
    fstat(2), fifo(7).

    Args:
        path: the path, relative to ``dir_fd`` when given (openat(2)).
        rule: what the opened file must be (``kind`` ``"file"`` or ``"dir"``).
        flags: the access flags (``os.O_RDONLY``, ``os.O_WRONLY | os.O_APPEND``, ...); never
            ``O_TRUNC``, which would truncate before the check.
        dir_fd: a directory descriptor ``path`` is relative to.
        create_mode: create the file with this mode (e.g. ``0o600``) if it is missing.
        name: the path as errors show it (default ``path``), e.g. ``dir/name`` with ``dir_fd``.

    Raises:
        UnsafeFile: it is there but breaks ``rule``: a symlink (open(2) fails with ELOOP; the
            exception's ``__cause__`` is that OSError), the wrong type (a FIFO, a socket, a
            directory for a file, a file for a directory), the wrong owner, mode or group,
            or more than one hard link. ``str(exc)`` is ``"<what> <path> <clause>"``
            (:func:`problem`); the descriptor is closed.
        OSError: open(2) failed otherwise (ENOENT, EACCES, ...); nothing is left open.
        ValueError: ``flags`` has ``O_TRUNC``, or ``rule.kind`` is ``"socket"``.
    """
    if flags & os.O_TRUNC or rule.kind == "socket":
        raise ValueError("open_checked: O_TRUNC and socket rules are not supported")
    shown = os.fspath(path) if name is None else name
    extra = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    extra |= os.O_DIRECTORY if rule.kind == "dir" else 0
    extra |= 0 if create_mode is None else os.O_CREAT
    try:
        fd = os.open(path, flags | extra, 0o600 if create_mode is None else create_mode, dir_fd=dir_fd)
    except OSError as exc:
        unsafe = _wrong_kind(exc, path, rule, dir_fd, shown)
        if unsafe is None:
            raise
        raise unsafe from exc
    try:
        why = problem(os.fstat(fd), rule)
        if why is not None:
            raise UnsafeFile(f"{rule.what} {shown} {why}")
        if rule.kind == "file":
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int, max_bytes: int, shown: str, what: str = "file") -> bytes:
    """Read all of open ``fd`` (to EOF), refusing more than ``max_bytes`` bytes. Does not close it.

    Raises:
        UnsafeFile: ``"<what> <shown> is over <max_bytes> bytes"`` (by fstat(2) size, or while
            reading, for a file that grows).
        OSError: read(2) failed.
    """
    if os.fstat(fd).st_size > max_bytes:
        raise UnsafeFile(f"{what} {shown} is over {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, _READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise UnsafeFile(f"{what} {shown} is over {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def read_checked(path: str | os.PathLike[str], rule: FileRule, *, max_bytes: int,
                 dir_fd: int | None = None, name: str | None = None) -> bytes:
    """:func:`open_checked` (read-only) and read the whole file, at most ``max_bytes`` bytes.

    Raises:
        UnsafeFile: as :func:`open_checked`, or the file is over ``max_bytes`` bytes.
        OSError: as :func:`open_checked`, or read(2) failed.
    """
    shown = os.fspath(path) if name is None else name
    fd = open_checked(path, rule, dir_fd=dir_fd, name=shown)
    try:
        return read_fd(fd, max_bytes, shown, rule.what)
    finally:
        os.close(fd)


def read_private_file(path: str, euid: int | None = None, *, max_bytes: int = 65536) -> bytes:
    """Read a secret file that must be a regular file owned by ``euid`` (default: our effective
    UID) with no group or other permissions (0600 or 0400), one hard link, at most
    ``max_bytes`` bytes (the way ssh(1) treats a private key). Uses :func:`read_checked`.

    Raises:
        StartupError: the file cannot be opened or read, or breaks the rule (one line: path,
            owner, mode), or is over ``max_bytes`` bytes.
    """
    euid = os.geteuid() if euid is None else euid
    rule = FileRule("file", frozenset({euid}), 0o077, what="secret file")
    try:
        return read_checked(path, rule, max_bytes=max_bytes)
    except OSError as exc:
        raise StartupError(f"refusing to start: cannot open secret file {path}: {exc.strerror}") from None
    except UnsafeFile as exc:
        raise StartupError(f"refusing to start: {exc}") from None


def policy_file_rule(broker_uid: int, what: str, kind: Literal["file", "dir"] = "file") -> FileRule:
    """The rule for a file that decides policy (the config, a resource) or its directory:
    owned by root or ``broker_uid``, not writable by group or others (mode & 0o022 == 0),
    and, for a file, one hard link."""
    return FileRule(kind, frozenset({0, broker_uid}), 0o022, single_link=kind == "file", what=what)


def owner_mode_problem(st: os.stat_result, broker_uid: int) -> str | None:
    """Why a file that decides policy (the config, a resource) is unsafe, or None if it is fine.

    Only the owner and mode part of :func:`policy_file_rule` (owned by root or ``broker_uid``,
    not writable by group or others): the type and link count are not checked. Same clause
    as :func:`problem`. Prefer :func:`open_checked` with :func:`policy_file_rule`.
    """
    rule = policy_file_rule(broker_uid, "")
    if _owner_mode_ok(st, rule):
        return None
    return f"must be owned by {_owners_text(rule.owners)}{_mode_text(rule)}; found {describe(st)}"


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically: a new temp file in the same directory
    (``.<name>.<pid>.tmp``, ``O_CREAT | O_EXCL | O_NOFOLLOW``), fsync(2), rename(2) over
    ``path``, then fsync(2) of the directory so the rename survives a crash.

    Readers see the old file or the new one, never a part. The file gets exactly ``mode``
    (fchmod(2) after creation, so the umask does not change it). A symlink at ``path`` is
    replaced, not followed (rename(2) replaces the link itself).

    Raises:
        OSError: the temp file cannot be created or written, or the rename failed (the temp
            file is removed), or the directory cannot be opened or synced (the new file is
            in place).
    """
    target = os.fspath(path)
    head, tail = os.path.split(target)
    tmp = os.path.join(head, f".{tail}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        remove_file(tmp)
        raise
    dfd = os.open(head or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_file(path: str | os.PathLike[str]) -> bool:
    """unlink(2) ``path``; True if something was removed, False if nothing was there.

    Raises:
        OSError: other than ENOENT (EACCES, EISDIR for a directory, ...).
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def lock_exclusive(fd: int) -> bool:
    """Take an exclusive, non-blocking flock(2) on ``fd`` (held until the fd is closed).

    Returns True if the lock is ours, False if another process holds it (EWOULDBLOCK).

    Raises:
        OSError: flock(2) failed for another reason (EBADF, ENOLCK, ...).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def make_dirs(path: str | os.PathLike[str], mode: int = 0o755) -> None:
    """Create directory ``path`` and its missing parents (mkdir(2), ``mode`` less the umask);
    nothing if it exists. Raises OSError if it cannot (or a non-directory is in the way)."""
    os.makedirs(path, mode=mode, exist_ok=True)
