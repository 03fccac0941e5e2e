"""The durable store's state directory: where it is, and the checks on it, its lock and its
database file before SQLite opens them.

The directory must be a real directory owned by the broker's effective UID with mode 0700;
``parrot.db`` and ``broker.lock`` regular files it owns, private to it (0600), with one hard
link. Every check goes through THE safe-open helper,
:func:`parrot_ipc.os.files.open_checked` (``O_NOFOLLOW``, then fstat(2) on the descriptor), and
every refusal is one :class:`~parrot_ipc.errors.StartupError` line that starts
``refusing to start:`` and names the path. The lock is an ``flock(2)`` held for the broker's
life, so a second broker on the same state refuses to start.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping
from typing import Final

from ..errors import StartupError, UnsafeFile
from ..os.files import FileRule, lock_exclusive, open_checked, problem

#: The database file in the state directory.
DB_NAME: Final = "parrot.db"
#: The lock file in the state directory (held with flock(2) while a broker runs).
LOCK_NAME: Final = "broker.lock"
#: The state directory of a broker run as root.
SYSTEM_STATE_DIR: Final = "/var/lib/parrot-mcp"


def default_state_dir(euid: int | None = None, env: Mapping[str, str] | None = None) -> str:
    """The state directory when ``--state-dir`` is not given.

    ``/var/lib/parrot-mcp`` for root (``euid`` 0; default the effective UID); else
    ``$XDG_STATE_HOME/parrot-ipc``, falling back to ``~/.local/state/parrot-ipc`` (XDG Base
    Directory Specification). ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return SYSTEM_STATE_DIR
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "parrot-ipc")


def refuse(msg: str) -> StartupError:
    """The StartupError ``refusing to start: <msg>`` (returned, for the caller to raise)."""
    return StartupError(f"refusing to start: {msg}")


def _open_or_refuse(path: str, rule: FileRule, *, flags: int = os.O_RDONLY,
                    create_mode: int | None = None) -> int:
    """:func:`open_checked`, its failures turned into one-line StartupErrors. Returns the fd.

    When open(2) itself fails (ELOOP for a symlink, ENOTDIR, EISDIR, EACCES on someone else's
    file), lstat(2) says what is there instead, checked by the same ``rule`` (:func:`problem`).
    """
    try:
        return open_checked(path, rule, flags=flags, create_mode=create_mode)
    except UnsafeFile as exc:
        raise refuse(str(exc)) from None
    except OSError as exc:  # say what is there instead, if it breaks the same rule
        why = None
        with contextlib.suppress(OSError):
            why = problem(os.lstat(path), rule)
        raise refuse(f"{rule.what} {path} {why}" if why else
                     f"cannot open {rule.what} {path}: {exc.strerror}") from None


def _private_file(euid: int, what: str) -> FileRule:
    return FileRule("file", frozenset({euid}), 0o077, what=what)


def ensure_state_dir(path: str, euid: int) -> None:
    """Create ``path`` (mode 0700, parents as needed) or check it: a directory (not a symlink)
    owned by ``euid`` with mode exactly 0700.

    Raises:
        StartupError: it cannot be created, or it breaks the rule (the message says what is
            there: kind, owner uid, mode).
    """
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise refuse(f"cannot create state directory {path}: {exc.strerror}") from None
    rule = FileRule("dir", frozenset({euid}), exact_mode=0o700, what="state directory")
    os.close(_open_or_refuse(path, rule))


def lock_state(state_dir: str, euid: int) -> int:
    """Open (creating, 0600) ``broker.lock`` in ``state_dir`` and take an exclusive, non-blocking
    ``flock(2)`` on it. Returns the descriptor: the lock lasts until it is closed.

    Raises:
        StartupError: the lock file is unsafe or cannot be opened, or another broker holds it
            (``... is in use by another broker``).
    """
    path = os.path.join(state_dir, LOCK_NAME)
    fd = _open_or_refuse(path, _private_file(euid, "lock file"), flags=os.O_RDWR, create_mode=0o600)
    try:
        locked = lock_exclusive(fd)
    except OSError:
        locked = False
    if not locked:
        os.close(fd)
        raise refuse(f"state database {os.path.join(state_dir, DB_NAME)} is in use by another broker "
                     f"({path} is locked)") from None
    return fd


def ensure_db_file(path: str, euid: int) -> None:
    """Create the database file ``path`` (0600) or check it: a regular file owned by ``euid``,
    private to it (mode 0600), one hard link, and openable for reading and writing.

    Raises:
        StartupError: it breaks the rule, or cannot be created or opened read-write.
    """
    fd = _open_or_refuse(path, _private_file(euid, "state database"), flags=os.O_RDWR, create_mode=0o600)
    os.close(fd)


def close_quietly(db: sqlite3.Connection | None, lock_fd: int | None) -> None:
    """Close ``db`` and the lock descriptor if given, ignoring errors (a failed start, a close)."""
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    if lock_fd is not None:
        with contextlib.suppress(OSError):
            os.close(lock_fd)
