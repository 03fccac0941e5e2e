"""What the agent commands check before they talk to the broker, so a newcomer's mistake gets a
sentence and exit 2 instead of a traceback or a misleading "cannot reach the broker" (issue 16,
"CLI and first contact").

- :func:`check_name`: an instance id in words (the protocol's pattern, ``docs/protocol.md``).
- :func:`message_text`: the message as UTF-8 text (argv or standard input), refusing other bytes.
- :func:`check_frame_size`: the request fits the broker's ``max_frame_bytes``.
- :func:`recipient_hint`: a name nobody has registered, and the closest known one (difflib).
- :func:`check_takeover`: ``register`` would replace the live session of another name.

Each failure ends the command through :func:`parrot_ipc.app.cli_output.fail`, exit 2
(:data:`parrot_ipc.errors.EXIT_USAGE`).
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any, Final

import msgspec
import typer

from ..client.blocking import Client
from ..core import protocol as p
from ..core.framing import DEFAULT_MAX_FRAME_BYTES
from ..errors import EXIT_USAGE, ParrotError, SessionFileError
from . import session_file
from .cli_output import fail

#: The instance id rule in words (``INSTANCE_ID_PATTERN``, ``docs/protocol.md``).
NAME_RULE: Final = "1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit"
_NAME_CHARS: Final = re.compile(r"[A-Za-z0-9_.-]")


def name_problem(name: str) -> str | None:
    """Why ``name`` is not an instance id (one phrase), or None if it is one."""
    if re.fullmatch(p.INSTANCE_ID_PATTERN, name):
        return None
    if not name:
        return "it is empty"
    if len(name) > 64:
        return f"it is {len(name)} characters long (at most 64)"
    bad = next((i for i, c in enumerate(name) if not _NAME_CHARS.fullmatch(c)), None)
    if bad is not None:
        return f"{name[bad]!r} at position {bad + 1} is not allowed"
    return f"it starts with {name[0]!r}"


def check_name(name: str, as_json: bool, what: str = "instance name") -> None:
    """End the command (exit 2) if ``name`` is not an instance id, saying why in words.

    Raises :class:`typer.Exit`.
    """
    why = name_problem(name)
    if why is not None:
        fail(as_json, EXIT_USAGE, f"bad {what} {name!r}: {why}; use {NAME_RULE}",
             error={"reason": "bad_instance_id", "message": f"{why}; use {NAME_RULE}", "name": name})


def message_text(message: str, as_json: bool) -> str:
    """The message: standard input's bytes for ``-``, else ``message`` (argv), as UTF-8 text.

    Bytes that are not UTF-8 (argv undecodable bytes arrive as surrogates, PEP 383) end the
    command with exit 2: the protocol carries JSON strings, which are Unicode text (RFC 8259,
    section 8.1). Raises :class:`typer.Exit`.
    """
    raw = sys.stdin.buffer.read() if message == "-" else message.encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(as_json, EXIT_USAGE,
             f"the message is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
             "parrot-ipc carries text only: convert it (e.g. iconv -f latin1 -t utf-8), or put "
             "binary data in a file and send its path.",
             {"reason": "not_utf8", "message": "the message must be UTF-8 text", "offset": exc.start})


def frame_limit() -> int:
    """The broker's ``max_frame_bytes``: the local config's if it can be read, else the default
    (:data:`parrot_ipc.core.framing.DEFAULT_MAX_FRAME_BYTES`, 65536)."""
    from .cli_admin import load_config

    try:
        return load_config(None).max_frame_bytes
    except (ValueError, OSError):
        return DEFAULT_MAX_FRAME_BYTES


def check_frame_size(method: str, params: dict[str, Any], as_json: bool) -> None:
    """End the command (exit 2) if the request frame for ``method`` with ``params`` would be
    over :func:`frame_limit`: the broker would answer -32004 and close (``docs/protocol.md``,
    Framing), which a client still writing sees only as a broken pipe. Raises :class:`typer.Exit`.
    """
    size = len(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})) + 1
    limit = frame_limit()
    if size > limit:
        fail(as_json, EXIT_USAGE,
             f"the message is too large: the request would be {size} bytes and the broker takes at most "
             f"{limit} bytes per request (max_frame_bytes)",
             "Put the data in a file and send its path instead, e.g.: parrot-ipc send NAME 'see /path/to/file'",
             {"reason": "frame_too_large", "message": "message over the broker's frame limit",
              "bytes": size, "max_frame_bytes": limit})


def recipient_hint(client: Client, to: str) -> str | None:
    """The stderr note for a message queued to ``to`` when no instance of that name has ever
    registered (``list_instances``), naming the closest known one (:func:`difflib.get_close_matches`);
    None if ``to`` is known or the session may not list instances."""
    try:
        known = [i.instance_id for i in client.list_instances()]
    except ParrotError:
        return None
    if to in known:
        return None
    note = f"note: no instance named {to!r} has registered yet; the message waits for one that does."
    close = difflib.get_close_matches(to, known, n=1, cutoff=0.6)
    return note + (f" Did you mean {close[0]!r}?" if close else "")


def check_takeover(client: Client, path: Path, name: str, force: bool, as_json: bool) -> str | None:
    """Before ``register NAME`` writes the session file ``path``: end the command (exit 2) if it
    holds a live session of another instance and ``force`` is not set; else the stderr note to
    print when a file is replaced (None when there is none). Raises :class:`typer.Exit`."""
    try:
        saved = session_file.load(path)
    except SessionFileError:
        return None
    try:
        with Client(client.socket_path) as probe:  # its own connection: ``client`` stays unbound
            probe.authenticate(saved.session_token)
        live = True
    except ParrotError:
        live = False
    if live and saved.instance_id != name and not force:
        fail(as_json, EXIT_USAGE,
             f"{path} holds the live session of {saved.instance_id!r}; registering {name!r} would replace it",
             f"Use --force to replace it, or give this agent its own file: PARROT_IPC_SESSION=/path parrot-ipc register {name}",
             {"reason": "session_in_use", "message": "the session file holds another live session",
              "instance_id": saved.instance_id, "session_file": str(path)})
    state = "live" if live else "expired or revoked"
    return f"note: replacing the {state} session of {saved.instance_id!r} in {path}"


def note(text: str | None) -> None:
    """Print ``text`` on stderr (also with ``--json``, whose stdout stays one document)."""
    if text:
        typer.echo(text, err=True)
