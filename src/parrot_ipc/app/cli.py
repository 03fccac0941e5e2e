"""The ``parrot-ipc`` command: a thin typer layer over :mod:`parrot_ipc.client` and the server.

This module holds the typer app, ``serve``, ``mcp`` and the agent commands (``ping``,
``register``, ``send``, ``recv``, ...); the operator commands live in
:mod:`parrot_ipc.app.cli_admin`, the shared options and error mapping in
:mod:`parrot_ipc.app.cli_output`. Errors map to exit codes through ``exc.exit_code`` of
:mod:`parrot_ipc.errors`.

Exit codes (stable, for scripts):
    0  ok
    1  the broker said no (its message is printed), or the broker could not start
    2  usage error
    3  the broker could not be reached (the path tried and how to start one are printed)
    4  the local session file is missing or unsafe (register again, or fix its mode)
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import msgspec
import typer

from ..client.blocking import Client
from ..errors import EXIT_USAGE, BrokerUnavailable, ConfigError, ParrotError, StartupError
from ..os.paths import default_socket_path
from . import cli_admin, cli_agents, cli_checks, cli_top, config_file, relay_cmd, session_file
from .cli_admin import load_config as load_config
from .cli_output import JsonOpt, SocketOpt, emit, emit_table, errors, global_options, session

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


app.callback()(global_options)


# --------------------------------------------------------------------------- serve
class StoreKind(enum.StrEnum):
    """``--store``: where the broker keeps its state."""

    sqlite = "sqlite"
    memory = "memory"


class Durability(enum.StrEnum):
    """``--durability``: what a committed write survives (docs/durability.md)."""

    normal = "normal"
    fsync = "fsync"


class _JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return msgspec.json.encode({
            "ts": self.formatTime(record), "level": record.levelname,
            "logger": record.name, "msg": record.getMessage(),
        }).decode()


ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--config", help=f"TOML config file. Default: {config_file.DEFAULT_CONFIG_PATH}, if it exists."),
]


@app.command()
def serve(
    socket: SocketOpt = None,
    config: ConfigOpt = None,
    audit_log: Annotated[Optional[Path], typer.Option(help="Also append JSON audit lines to this file (0600).")] = None,  # noqa: UP045
    state_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="State directory (0700) for the SQLite store. Default: /var/lib/parrot-mcp for root; else "
        "$XDG_STATE_HOME/parrot-ipc, or ~/.local/state/parrot-ipc.", show_default=False)] = None,
    store: Annotated[StoreKind, typer.Option(
        help="sqlite: durable (default); memory: throwaway, everything is lost at exit.")] = StoreKind.sqlite,
    durability: Annotated[Optional[Durability], typer.Option(  # noqa: UP045
        help="normal: survives a broker crash (SQLite synchronous=NORMAL, WAL); fsync: also survives "
        "power loss (synchronous=FULL). Default: the config's, else normal.", show_default=False)] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR. The JSON audit lines are "
                                           "always written, whatever the level.")] = "INFO",
    as_json: JsonOpt = False,
) -> None:
    """Run the broker in the foreground until SIGTERM or SIGINT; SIGHUP reloads the policy.

    Creates the socket's directory with mode 0700 (or refuses one that is not a 0700
    directory of ours), binds the socket 0600, and admits only peers the policy allows by
    their SO_PEERCRED credentials: with no config, our UID and root. Mail, sessions and leases
    are kept in SQLite in the state directory (see docs/durability.md); a state database locked
    by another broker, corrupt or not writable stops the start with one line. Logs and JSON
    audit lines go to stderr.
    """
    from .daemon import open_audit_file, run_broker

    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    logging.getLogger("parrot_ipc.audit").setLevel(logging.INFO)  # the audit trail ignores --log-level
    try:
        loaded = config_file.load_config(config, explicit=config is not None)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if durability is not None:
        loaded = dataclasses.replace(loaded, server=msgspec.structs.replace(loaded.server, durability=durability.value))
    path = socket or loaded.server.socket or default_socket_path()
    try:
        if audit_log is not None:
            open_audit_file(str(audit_log))
        run_broker(path, loaded, config_path=None if config is None else str(config), store=store.value,
                   state_dir=str(state_dir) if state_dir else None)
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


app.command("check-config")(cli_admin.check_config)
app.command()(cli_admin.doctor)


# --------------------------------------------------------------------------- agent commands
NameArg = Annotated[str, typer.Argument(help="Instance id: 1-64 of A-Z a-z 0-9 _ . -, not starting with _ . -")]
MessageArg = Annotated[str, typer.Argument(help="Message text; '-' reads it from standard input.")]



@app.command()
def ping(socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Check that a broker answers (needs no session)."""
    with errors(as_json), Client(socket) as client:
        t0 = time.perf_counter()
        reply = client.ping()
        ms = (time.perf_counter() - t0) * 1000
        emit(as_json, {"result": reply, "socket": client.socket_path, "rtt_ms": round(ms, 3)},
              f"{reply} from {client.socket_path} in {ms:.2f} ms")


@app.command()
def register(
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", help="Replace the live session of another name "
                                        "saved in the session file.")] = False,
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Get a session token for NAME and save it to the session file (0600).

    The file is ~/.ipc-session, or $PARROT_IPC_SESSION. The token is never printed. A file
    holding the live session of another name is replaced only with --force (exit 2 without).
    """
    cli_checks.check_name(name, as_json)
    with errors(as_json), Client(socket) as client:
        path = session_file.session_path()
        replacing = cli_checks.check_takeover(client, path, name, force, as_json)
        res = client.get_token(name)
        cli_checks.note(replacing)
        session_file.save(path, session_file.SavedSession(
            instance_id=res.instance_id, session_token=res.token, expires_at=res.expires_at))
        emit(as_json, {"instance_id": res.instance_id, "expires_at": res.expires_at,
                        "scopes": res.scopes, "session_file": str(path)},
              f"registered as {res.instance_id} (scopes: {', '.join(res.scopes)}; "
              f"expires {res.expires_at}); session saved to {path}")


@app.command()
def send(
    to: Annotated[str, typer.Argument(help="Recipient instance id.")],
    message: MessageArg,
    data: Annotated[Optional[str], typer.Option(help="Structured data: a JSON object.")] = None,  # noqa: UP045
    idempotency_key: Annotated[Optional[str], typer.Option(help="Repeat-safe key: a resend with the same key queues nothing new.")] = None,  # noqa: UP045
    reply_to: Annotated[Optional[str], typer.Option(help="The id of the message this answers (see 'recv').")] = None,  # noqa: UP045
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send MESSAGE to TO. The sender is your session's instance, never a claimed name.

    MESSAGE must be UTF-8 text that fits the broker's frame limit (exit 2 otherwise). A
    recipient nobody has registered gets the message queued, and a note on stderr.
    """
    cli_checks.check_name(to, as_json, "recipient")
    content = cli_checks.message_text(message, as_json)
    payload = None
    if data is not None:
        try:
            payload = msgspec.json.decode(data)
        except msgspec.DecodeError:
            payload = None
        if not isinstance(payload, dict):
            typer.echo("error: --data must be a JSON object", err=True)
            raise typer.Exit(EXIT_USAGE)
    cli_checks.check_frame_size("send", {"to": to, "content": content, "data": payload,
                                         "idempotency_key": idempotency_key, "reply_to": reply_to}, as_json)
    with session(socket, as_json) as (client, _):
        res = client.send(to, content, data=payload, idempotency_key=idempotency_key, reply_to=reply_to)
        emit(as_json, res, f"sent {res.id} to {res.to} ({res.status})")
        if res.status == "queued":
            cli_checks.note(cli_checks.recipient_hint(client, to))


@app.command()
def recv(
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for mail if none is queued (0-300).", min=0, max=300)] = 0.0,
    max_count: Annotated[int, typer.Option("--max", help="Most messages to take (1-1000).", min=1, max=1000)] = 100,
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Receive your queued messages, print them, then ack them (at-least-once delivery)."""
    with session(socket, as_json) as (client, _):
        msgs = client.receive(max=max_count, wait_s=wait)
        if as_json:
            acked = client.ack([m.id for m in msgs]) if msgs else 0
            emit(True, {"messages": msgs, "acked": acked})
            return
        if not msgs:
            typer.echo("(no messages)", err=True)
            return
        for m in msgs:
            extra = "" if m.data is msgspec.UNSET else f"  data={msgspec.json.encode(m.data).decode()}"
            if m.reply_to is not msgspec.UNSET:
                extra += f"  reply_to={m.reply_to}"
            typer.echo(f"[{m.sent_at}] {m.from_} -> {m.to}: {m.content}{extra}")
        client.ack([m.id for m in msgs])


@app.command()
def broadcast(message: MessageArg, socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Send MESSAGE to every other registered instance."""
    content = cli_checks.message_text(message, as_json)
    cli_checks.check_frame_size("broadcast", {"content": content}, as_json)
    with session(socket, as_json) as (client, _):
        res = client.broadcast(content)
        emit(as_json, res, f"broadcast {res.id} to {len(res.recipients)} recipient(s)"
              + (f": {', '.join(res.recipients)}" if res.recipients else ""))


@app.command("list")
def list_(socket: SocketOpt = None, as_json: JsonOpt = False,
          remote: Annotated[bool, typer.Option("--remote", help="List the remote nodes seen recently instead (federation).")] = False) -> None:
    """List known instances: online or not, last seen, messages queued (--remote: remote nodes)."""
    if remote:
        relay_cmd.list_remote(socket, as_json)
        return
    with session(socket, as_json) as (client, _):
        rows = client.list_instances()
        w = max([8, *(len(r.instance_id) for r in rows)])
        emit_table(as_json, "instances", rows, f"{'INSTANCE':<{w}}  {'ONLINE':<6}  {'LAST SEEN':<24}  QUEUED",
                   lambda r: f"{r.instance_id:<{w}}  {'yes' if r.online else 'no':<6}  {r.last_seen:<24}  {r.queued}",
                   empty="(no instances)")


@app.command()
def rename(
    new_id: Annotated[str, typer.Argument(help="The new instance id.")],
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rename your instance. Mail to the old name is forwarded for a while; one rename per hour."""
    cli_checks.check_name(new_id, as_json, "new name")
    with session(socket, as_json) as (client, path):
        res = client.rename(new_id)
        saved = session_file.load(path)
        saved.instance_id = res.instance_id
        session_file.save(path, saved)
        emit(as_json, res, f"renamed {res.previous_id} -> {res.instance_id}; mail to "
              f"{res.previous_id} is forwarded for a while")


@app.command()
def whoami(socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Show your session: instance, the peer credentials the broker saw, scopes, expiry."""
    with session(socket, as_json) as (client, _):
        me = client.whoami()
        emit(as_json, me, f"{me.instance_id}  uid={me.uid} gid={me.gid} pid={me.pid}  "
              f"scopes={','.join(me.scopes)}  expires={me.expires_at}")


@app.command()
def logout(socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke your session token at the broker and delete the session file."""
    path = session_file.session_path()
    revoked = False
    with errors(as_json):
        saved = session_file.load(path)
        with Client(socket) as client:
            try:
                client.authenticate(saved.session_token)
                revoked = client.revoke()
            except ParrotError as exc:
                if not exc.unauthenticated or isinstance(exc, BrokerUnavailable):
                    raise
    session_file.remove(path)
    emit(as_json, {"revoked": revoked, "session_file_removed": str(path)},
          f"logged out{' (session revoked)' if revoked else ' (the session was already invalid)'}; removed {path}")


@app.command()
def release(name: NameArg, socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Free the instance name NAME that your user owns (needs no session).

    Its session ends and the mail left in it is deleted; then any admitted user may claim it.
    """
    with errors(as_json), Client(socket) as client:
        res = client.release(name)
        emit(as_json, res, f"released {res.instance_id} ({res.dropped} unread message(s) deleted)")


app.add_typer(cli_admin.admin_app, name="admin")
app.add_typer(cli_admin.resource_app, name="resource")


@app.command("mcp")
def mcp_(
    instance: Annotated[str, typer.Option("--instance", "-i", help="The instance id this agent registers as, "
                                          "e.g. claude-1.")] = "",
    socket: SocketOpt = None,
    log_level: Annotated[str, typer.Option(help="Log level on stderr: DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
    instance_auto: Annotated[Optional[str], typer.Option("--instance-auto", help="Instead of --instance: name it TOOL-<this directory>-<hash4>, stable per project (written by 'parrot-ipc setup').")] = None,  # noqa: UP045
) -> None:
    """Run an MCP server on stdin/stdout that gives an AI agent the broker as tools.

    Add it to Claude Code with: claude mcp add parrot -- parrot-ipc mcp --instance claude-1

    The session token is held in memory only, never written. The initialize instructions are the
    broker's resource 'instructions' (generic ones, and a warning on stderr, if the broker is
    unreachable or refuses). Needs the optional 'mcp' extra of parrot-ipc (the MCP Python SDK).
    """
    if instance_auto is not None and not instance:
        from .setup import default_instance

        instance = default_instance(instance_auto, os.path.abspath("."))
    cli_checks.check_name(instance, False, "instance id")
    try:
        from ..client.mcp_bridge import run_bridge
    except ImportError as exc:
        typer.echo(f"error: the MCP bridge needs the 'mcp' extra ({exc}); install it with: "
                   "pip install 'parrot-ipc[mcp]'", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    run_bridge(instance, socket, log_level=log_level)


app.command()(cli_admin.audit)
app.command()(cli_top.top)
app.command("relay")(relay_cmd.relay)
app.command()(cli_agents.hook)
app.command()(cli_agents.setup)


def main() -> None:
    """Console-script entry point."""
    app()
