"""The ``parrot-ipc`` command: a thin typer layer over :mod:`parrot_ipc.client` and the server.

Exit codes (stable, for scripts):
    0  ok
    1  the broker said no (its message is printed), or the broker could not start
    2  usage error
    3  the broker could not be reached (the path tried and how to start one are printed)
    4  the local session file is missing or unsafe (register again, or fix its mode)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import msgspec
import typer

from . import session_file
from .client import BrokerUnavailable, Client, ParrotError
from .core.config import BrokerConfig
from .oslayer import StartupError, default_socket_path

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_SESSION = 0, 1, 2, 3, 4

app = typer.Typer(
    name="parrot-ipc",
    help=(
        "parrot-ipc: a local message broker for AI agents, gated by kernel-attested peer "
        "credentials (SO_PEERCRED).\n\n"
        "Start a broker with 'parrot-ipc serve', then register an agent with "
        "'parrot-ipc register NAME' and use send / recv / list.\n\n"
        "Exit codes: 0 ok; 1 the broker said no; 2 usage; 3 the broker could not be reached; "
        "4 the session file is missing or unsafe."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SocketOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional on 3.11
    typer.Option(
        "--socket", "-s", envvar="PARROT_IPC_SOCKET", show_default=False,
        help="Broker socket path. Default: $PARROT_IPC_DIR/mcp.sock; else, for a non-root user, "
        "$XDG_RUNTIME_DIR/parrot-mcp/mcp.sock; else /run/parrot-mcp/mcp.sock.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, for scripts.")]


# --------------------------------------------------------------------------- output
def _emit(as_json: bool, obj: Any, human: str | None = None) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(obj)).decode() + "\n")
    elif human is not None:
        typer.echo(human)


def _fail(as_json: bool, code: int, message: str, hint: str = "", error: dict[str, Any] | None = None) -> NoReturn:
    if as_json:
        _emit(True, {"error": error or {"message": message}})
    else:
        typer.echo(f"error: {message}", err=True)
        if hint:
            typer.echo(hint, err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors(as_json: bool) -> Iterator[None]:
    """Map library errors to messages and exit codes (see the module docstring)."""
    try:
        yield
    except BrokerUnavailable as exc:
        default = exc.socket_path == default_socket_path()
        start = "parrot-ipc serve" + ("" if default else f" --socket {exc.socket_path}")
        _fail(as_json, EXIT_UNREACHABLE, str(exc.message), f"Is a broker running? Start one with: {start}",
              {"code": 0, "reason": exc.reason, "message": exc.message, "socket": exc.socket_path})
    except ParrotError as exc:
        hint = ""
        if exc.code == -32001:
            hint = "Your session is no longer valid: run 'parrot-ipc register NAME' again."
        _fail(as_json, EXIT_REFUSED, f"{exc.message} (code {exc.code}, {exc.reason})", hint,
              {"code": exc.code, "reason": exc.reason, "message": exc.message, "data": exc.data})
    except session_file.SessionFileError as exc:
        _fail(as_json, EXIT_SESSION, str(exc), error={"reason": "session_file", "message": str(exc)})


@contextlib.contextmanager
def _session(socket: str | None, as_json: bool) -> Iterator[tuple[Client, Path]]:
    """An authenticated client for the saved session, inside the error mapping."""
    with _errors(as_json):
        path = session_file.session_path()
        saved = session_file.load(path)
        with Client(socket) as client:
            client.authenticate(saved.session_token)
            yield client, path


# --------------------------------------------------------------------------- serve
class _JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return msgspec.json.encode({
            "ts": self.formatTime(record), "level": record.levelname,
            "logger": record.name, "msg": record.getMessage(),
        }).decode()


def load_config(path: Path | None) -> BrokerConfig:
    """The broker config: the ``[server]`` table of a TOML file, then ``$PARROT_MAX_INPUT_SIZE``.

    Raises ValueError naming the file and the bad key.
    """
    server: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ValueError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config {path} is not valid TOML: {exc}") from None
        unknown = set(doc) - {"server"}
        if unknown:
            raise ValueError(f"config {path}: unsupported table(s) {', '.join(sorted(unknown))} "
                             "(this version reads [server] only)")
        server = doc.get("server", {})
    env_max = os.environ.get("PARROT_MAX_INPUT_SIZE")
    if env_max:
        server = {**server, "max_frame_bytes": env_max}
    try:
        return msgspec.convert(server, BrokerConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"config {path or '(environment)'}: {exc}") from None


@app.command()
def serve(
    socket: SocketOpt = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML config file ([server] table).")] = None,  # noqa: UP045
    state_dir: Annotated[Optional[Path], typer.Option(help="State directory (reserved for the durable store).")] = None,  # noqa: UP045
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    as_json: JsonOpt = False,
) -> None:
    """Run the broker in the foreground until SIGTERM or SIGINT.

    Creates the socket's directory with mode 0700 (or refuses one that is not a 0700
    directory of ours), binds the socket 0600, and admits only peers whose SO_PEERCRED UID is
    ours or root's. Logs and JSON audit lines go to stderr.
    """
    from .server import run_broker

    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    try:
        cfg = load_config(config)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    path = socket or cfg.socket or default_socket_path()
    try:
        run_broker(path, cfg)
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_REFUSED) from None


# --------------------------------------------------------------------------- doctor
@app.command()
def doctor(
    socket: SocketOpt = None,
    state_dir: Annotated[Optional[Path], typer.Option(help="State directory. Default: /var/lib/parrot-mcp for root, else $XDG_STATE_HOME/parrot-ipc.")] = None,  # noqa: UP045
    config: Annotated[Optional[Path], typer.Option(help="TOML config file to validate. Default for root: /etc/parrot-ipc/config.toml.")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Check the installation: runtime dir and socket, ping, config, state, units, AppArmor/Landlock.

    Prints PASS/WARN/FAIL with a fix for each problem. Exit code 1 if any check FAILs, else 0.
    """
    from . import doctor as doc

    rows = doc.run_checks(socket or default_socket_path(), state_dir=None if state_dir is None else str(state_dir),
                          config=config, load_config=load_config)
    _emit(as_json, doc.as_dict(rows), doc.render(rows))
    raise typer.Exit(EXIT_REFUSED if doc.failed(rows) else EXIT_OK)


# --------------------------------------------------------------------------- agent commands
@app.command()
def ping(socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Check that a broker answers (needs no session)."""
    with _errors(as_json), Client(socket) as client:
        t0 = time.perf_counter()
        reply = client.ping()
        ms = (time.perf_counter() - t0) * 1000
        _emit(as_json, {"result": reply, "socket": client.socket_path, "rtt_ms": round(ms, 3)},
              f"{reply} from {client.socket_path} in {ms:.2f} ms")


@app.command()
def register(
    name: Annotated[str, typer.Argument(help="Instance id: 1-64 of A-Z a-z 0-9 _ . -, not starting with _ . -")],
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Get a session token for NAME and save it to the session file (0600).

    The file is ~/.ipc-session, or $PARROT_IPC_SESSION. The token is never printed.
    """
    with _errors(as_json), Client(socket) as client:
        res = client.get_token(name)
        path = session_file.session_path()
        session_file.save(path, session_file.SavedSession(
            instance_id=res.instance_id, session_token=res.token, expires_at=res.expires_at))
        _emit(as_json, {"instance_id": res.instance_id, "expires_at": res.expires_at,
                        "scopes": res.scopes, "session_file": str(path)},
              f"registered as {res.instance_id} (scopes: {', '.join(res.scopes)}; "
              f"expires {res.expires_at}); session saved to {path}")


@app.command()
def send(
    to: Annotated[str, typer.Argument(help="Recipient instance id.")],
    message: Annotated[str, typer.Argument(help="Message text; '-' reads it from standard input.")],
    data: Annotated[Optional[str], typer.Option(help="Structured data: a JSON object.")] = None,  # noqa: UP045
    idempotency_key: Annotated[Optional[str], typer.Option(help="Repeat-safe key: a resend with the same key queues nothing new.")] = None,  # noqa: UP045
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send MESSAGE to TO. The sender is your session's instance, never a claimed name."""
    content = sys.stdin.read() if message == "-" else message
    payload = None
    if data is not None:
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            payload = None
        if not isinstance(payload, dict):
            typer.echo("error: --data must be a JSON object", err=True)
            raise typer.Exit(EXIT_USAGE)
    with _session(socket, as_json) as (client, _):
        res = client.send(to, content, data=payload, idempotency_key=idempotency_key)
        _emit(as_json, res, f"sent {res.id} to {res.to} ({res.status})")


@app.command()
def recv(
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for mail if none is queued (0-300).", min=0, max=300)] = 0.0,
    max_count: Annotated[int, typer.Option("--max", help="Most messages to take (1-1000).", min=1, max=1000)] = 100,
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Receive your queued messages, print them, then ack them (at-least-once delivery)."""
    with _session(socket, as_json) as (client, _):
        msgs = client.receive(max=max_count, wait_s=wait)
        if as_json:
            acked = client.ack([m.id for m in msgs]) if msgs else 0
            _emit(True, {"messages": msgs, "acked": acked})
            return
        if not msgs:
            typer.echo("(no messages)", err=True)
            return
        for m in msgs:
            extra = "" if m.data is msgspec.UNSET else f"  data={msgspec.json.encode(m.data).decode()}"
            typer.echo(f"[{m.sent_at}] {m.from_} -> {m.to}: {m.content}{extra}")
        client.ack([m.id for m in msgs])


@app.command()
def broadcast(
    message: Annotated[str, typer.Argument(help="Message text; '-' reads it from standard input.")],
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send MESSAGE to every other registered instance."""
    content = sys.stdin.read() if message == "-" else message
    with _session(socket, as_json) as (client, _):
        res = client.broadcast(content)
        _emit(as_json, res, f"broadcast {res.id} to {len(res.recipients)} recipient(s)"
              + (f": {', '.join(res.recipients)}" if res.recipients else ""))


@app.command("list")
def list_(socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """List known instances: online or not, last seen, messages queued."""
    with _session(socket, as_json) as (client, _):
        rows = client.list_instances()
        if as_json:
            _emit(True, {"instances": rows})
            return
        if not rows:
            typer.echo("(no instances)")
            return
        w = max(8, *(len(r.instance_id) for r in rows))
        typer.echo(f"{'INSTANCE':<{w}}  {'ONLINE':<6}  {'LAST SEEN':<24}  QUEUED")
        for r in rows:
            typer.echo(f"{r.instance_id:<{w}}  {'yes' if r.online else 'no':<6}  {r.last_seen:<24}  {r.queued}")


@app.command()
def rename(
    new_id: Annotated[str, typer.Argument(help="The new instance id.")],
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rename your instance. Mail to the old name is forwarded for a while; one rename per hour."""
    with _session(socket, as_json) as (client, path):
        res = client.rename(new_id)
        saved = session_file.load(path)
        saved.instance_id = res.instance_id
        session_file.save(path, saved)
        _emit(as_json, res, f"renamed {res.previous_id} -> {res.instance_id}; mail to "
              f"{res.previous_id} is forwarded for a while")


@app.command()
def whoami(socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Show your session: instance, the peer credentials the broker saw, scopes, expiry."""
    with _session(socket, as_json) as (client, _):
        me = client.whoami()
        _emit(as_json, me, f"{me.instance_id}  uid={me.uid} gid={me.gid} pid={me.pid}  "
              f"scopes={','.join(me.scopes)}  expires={me.expires_at}")


@app.command()
def logout(socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke your session token at the broker and delete the session file."""
    path = session_file.session_path()
    revoked = False
    with _errors(as_json):
        saved = session_file.load(path)
        with Client(socket) as client:
            try:
                client.authenticate(saved.session_token)
                revoked = client.revoke()
            except ParrotError as exc:
                if exc.code != -32001 or isinstance(exc, BrokerUnavailable):
                    raise
    session_file.remove(path)
    _emit(as_json, {"revoked": revoked, "session_file_removed": str(path)},
          f"logged out{' (session revoked)' if revoked else ' (the session was already invalid)'}; removed {path}")


def main() -> None:
    """Console-script entry point."""
    app()
