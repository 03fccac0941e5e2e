"""What the ``parrot-ipc`` commands share: the common options, output, and the mapping of
errors to messages and exit codes.

Exit codes come from the classes of :mod:`parrot_ipc.errors` (``exc.exit_code``): 0 ok,
1 the broker said no (:class:`ParrotError`), 2 usage or bad config (:class:`ConfigError`),
3 the broker could not be reached (:class:`BrokerUnavailable`), 4 the session file is missing
or unsafe (:class:`SessionFileError`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import msgspec
import typer

from ..client.blocking import Client
from ..client.wire import start_hint
from ..errors import BrokerUnavailable, ParrotError, SessionFileError, UntrustedBroker
from . import session_file

SocketOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional on 3.11
    typer.Option(
        "--socket", "-s", envvar="PARROT_IPC_SOCKET", show_default=False,
        help="Broker socket path. Default: $PARROT_IPC_DIR/mcp.sock; else, for a non-root user, "
        "$XDG_RUNTIME_DIR/parrot-mcp/mcp.sock, or /tmp/parrot-ipc-UID/mcp.sock without it; for root "
        "/run/parrot-mcp/mcp.sock.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, for scripts.")]


def _version(value: bool) -> None:
    """``--version``: print ``parrot-ipc VERSION`` and exit 0."""
    if value:
        from .. import __version__

        typer.echo(f"parrot-ipc {__version__}")
        raise typer.Exit(0)


def _defaults_for(command: Any, values: dict[str, Any]) -> dict[str, Any]:
    """A click ``default_map`` giving ``values`` to ``command`` and every command under it."""
    subs = getattr(command, "commands", {})
    return {**values, **{name: _defaults_for(sub, values) for name, sub in subs.items()}}


def global_options(
    ctx: typer.Context,
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Options before the command (``parrot-ipc --socket PATH --json ping``) count as if given
    after it; an option given after the command wins.

    ``--socket`` is passed on as ``$PARROT_IPC_SOCKET`` (the option's own environment variable,
    read when the command's options are parsed, which click does after this callback); ``--json``
    through click's ``default_map``.
    """
    if socket is not None:
        os.environ["PARROT_IPC_SOCKET"] = socket
    if as_json:
        ctx.default_map = _defaults_for(ctx.command, {"as_json": True})


def emit(as_json: bool, obj: Any, human: str | None = None) -> None:
    """Print ``obj`` as one indented JSON document on stdout when ``as_json``; else print the
    line(s) ``human``, if given. ``obj`` is anything msgspec encodes (Structs, dicts, lists)."""
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(obj)).decode() + "\n")
    elif human is not None:
        typer.echo(human)


def fail(as_json: bool, code: int, message: str, hint: str = "", error: dict[str, Any] | None = None) -> NoReturn:
    """End the command with exit ``code``: ``{"error": error}`` on stdout with ``--json``
    (default ``{"message": message}``), else ``error: MESSAGE`` and the ``hint`` on stderr.

    Raises :class:`typer.Exit` always.
    """
    if as_json:
        emit(True, {"error": error or {"message": message}})
    else:
        typer.echo(f"error: {message}", err=True)
        if hint:
            typer.echo(hint, err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def errors(as_json: bool) -> Iterator[None]:
    """Map library errors to messages and exit codes (``exc.exit_code``; module docstring).

    Raises :class:`typer.Exit` for :class:`BrokerUnavailable`, :class:`ParrotError` and
    :class:`SessionFileError`; anything else passes through.
    """
    try:
        yield
    except UntrustedBroker as exc:  # issue 13: someone else listens at the path
        fail(as_json, exc.exit_code, str(exc.message), exc.hint,
             {"code": 0, "reason": exc.reason, "message": exc.message, "socket": exc.socket_path,
              "listener_uid": exc.listener_uid, "listener_pid": exc.listener_pid})
    except BrokerUnavailable as exc:
        fail(as_json, exc.exit_code, str(exc.message), start_hint(exc.socket_path),
             {"code": 0, "reason": exc.reason, "message": exc.message, "socket": exc.socket_path})
    except ParrotError as exc:
        hint = ""
        if exc.unauthenticated:
            hint = "Your session is no longer valid: run 'parrot-ipc register NAME' again."
        fail(as_json, exc.exit_code, f"{exc.message} (code {exc.code}, {exc.reason})", hint,
             {"code": exc.code, "reason": exc.reason, "message": exc.message, "data": exc.data})
    except SessionFileError as exc:
        fail(as_json, exc.exit_code, str(exc), error={"reason": "session_file", "message": str(exc)})


@contextlib.contextmanager
def session(socket: str | None, as_json: bool) -> Iterator[tuple[Client, Path]]:
    """An authenticated :class:`Client` for the saved session, and the session file's path,
    inside :func:`errors` (so a missing file exits 4, a dead token 1, no broker 3)."""
    with errors(as_json):
        path = session_file.session_path()
        saved = session_file.load(path)
        with Client(socket) as client:
            client.authenticate(saved.session_token)
            yield client, path


def emit_table(as_json: bool, key: str, rows: Sequence[Any], header: str, line: Callable[[Any], str],
               empty: str | None = None) -> None:
    """Print ``rows``: with ``--json`` one document ``{key: rows}``; else the ``header`` line and
    ``line(row)`` for each row, or only the line ``empty`` (if given) when there are none."""
    if as_json:
        emit(True, {key: rows})
        return
    if not rows and empty is not None:
        typer.echo(empty)
        return
    typer.echo(header)
    for r in rows:
        typer.echo(line(r))
