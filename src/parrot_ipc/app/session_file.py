"""The CLI's session file: where a registered instance keeps its token between commands.

Default ``~/.ipc-session`` (the claude-ipc layout: ``{"instance_id", "session_token"}``);
``$PARROT_IPC_SESSION`` overrides the path. Treated the way ssh(1) treats a private key: it is
written 0600, and a file that others can read or write, that another user owns, that has
another hard link, or that is a symlink or not a regular file (a FIFO is refused at once, it
cannot hang the CLI) is refused. The file operations are :mod:`parrot_ipc.os.files`'.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec

from ..errors import SessionFileError, UnsafeFile
from ..os import files, users

#: The largest session file read, in bytes (one is about 200 bytes).
MAX_SESSION_BYTES: Final = 65536


class SavedSession(msgspec.Struct, kw_only=True):
    """One registered instance, as JSON in the session file.

    Attributes:
        instance_id: the name the instance registered under.
        session_token: the bearer token ``register`` returned (a secret).
        expires_at: when the token expires (RFC 3339 UTC text), or None if not known.
    """

    instance_id: str
    session_token: str
    expires_at: str | None = None


_DECODER = msgspec.json.Decoder(SavedSession)


def session_path(env: Mapping[str, str] | None = None) -> Path:
    """``$PARROT_IPC_SESSION`` if set (and not empty), else ``~/.ipc-session``."""
    env = os.environ if env is None else env
    override = env.get("PARROT_IPC_SESSION")
    return Path(override) if override else Path.home() / ".ipc-session"


def _rule() -> files.FileRule:
    """A regular file we own, no group or other permissions, one hard link."""
    return files.FileRule("file", frozenset({users.effective_uid()}), 0o077, what="session file")


def load(path: Path) -> SavedSession:
    """Read and check the session file (:func:`parrot_ipc.os.files.read_checked`).

    Raises:
        SessionFileError: there is none (``register`` first), it cannot be opened or read, it
            is unsafe (symlink, not a regular file, another owner, open to group or others,
            another hard link: the message names the path and what was found, with the fix
            ``chmod 600``), over :data:`MAX_SESSION_BYTES`, or not valid session JSON.
    """
    try:
        raw = files.read_checked(path, _rule(), max_bytes=MAX_SESSION_BYTES)
    except FileNotFoundError:
        raise SessionFileError(f"no session file at {path}: run 'parrot-ipc register NAME' first") from None
    except OSError as exc:
        raise SessionFileError(f"cannot open session file {path}: {exc.strerror}") from None
    except UnsafeFile as exc:
        raise SessionFileError(
            f"{exc}; refusing to use it: it must be a file private to you (chmod 600 {path} "
            f"if it is yours), or register again") from None
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise SessionFileError(f"session file {path} is damaged ({exc}); register again") from None


def save(path: Path, session: SavedSession) -> None:
    """Write the session file atomically with mode 0600 (a temp file, fsync, rename:
    :func:`parrot_ipc.os.files.write_atomic`).

    Raises:
        OSError: the directory is not writable, the disk is full, ... (the temp file is removed).
    """
    files.write_atomic(path, msgspec.json.format(msgspec.json.encode(session)) + b"\n", mode=0o600)


def remove(path: Path) -> bool:
    """Delete the session file; True if there was one.

    Raises:
        OSError: other than "not there" (EACCES, EISDIR, ...).
    """
    return files.remove_file(path)
