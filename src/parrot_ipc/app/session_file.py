"""The CLI's session file: where a registered instance keeps its token between commands.

Default ``~/.ipc-session`` (the claude-ipc layout: ``{"instance_id", "session_token"}``);
``$PARROT_IPC_SESSION`` overrides the path. Treated the way ssh(1) treats a private key: it is
written 0600, and a file that others can read or write, that another user owns, or that is a
symlink is refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

import msgspec

from ..errors import SessionFileError


class SavedSession(msgspec.Struct, kw_only=True):
    instance_id: str
    session_token: str
    expires_at: str | None = None


_DECODER = msgspec.json.Decoder(SavedSession)


def session_path(env: Mapping[str, str] | None = None) -> Path:
    """``$PARROT_IPC_SESSION`` if set, else ``~/.ipc-session``."""
    env = os.environ if env is None else env
    override = env.get("PARROT_IPC_SESSION")
    return Path(override) if override else Path.home() / ".ipc-session"


def load(path: Path) -> SavedSession:
    """Read and check the session file. Raises :class:`SessionFileError`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SessionFileError(f"no session file at {path}: run 'parrot-ipc register NAME' first") from None
    except OSError as exc:
        raise SessionFileError(f"cannot open session file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SessionFileError(f"session file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise SessionFileError(
                f"session file {path} is owned by uid {st.st_uid}, not you (uid {os.geteuid()}); refusing to use it"
            )
        if st.st_mode & 0o077:
            raise SessionFileError(
                f"permissions {stat.S_IMODE(st.st_mode):04o} for session file {path} are too open; "
                f"it must be private to you: chmod 600 {path}, or register again"
            )
        raw = f.read(65536)
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise SessionFileError(f"session file {path} is damaged ({exc}); register again") from None


def save(path: Path, session: SavedSession) -> None:
    """Write the session file atomically with mode 0600 (a temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(session)) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove(path: Path) -> bool:
    """Delete the session file; True if there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
