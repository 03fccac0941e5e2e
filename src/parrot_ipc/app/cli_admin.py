"""The ``parrot-ipc`` commands for operators: ``check-config``, ``doctor``, ``audit``, and the
``admin`` and ``resource`` groups. :mod:`parrot_ipc.app.cli` registers them on its app.

Exit codes as in :mod:`parrot_ipc.app.cli_output`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import msgspec
import typer

from ..core.config import BrokerConfig
from ..errors import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, ConfigError, ParrotError
from ..os.paths import default_socket_path
from . import config_file
from .cli_output import JsonOpt, SocketOpt, emit, emit_table, fail, session


def load_config(path: Path | None) -> BrokerConfig:
    """The ``[server]`` settings of ``path`` (or of the default config, if it exists).

    Raises ValueError (:class:`parrot_ipc.errors.ConfigError`) naming the file and key.
    """
    return config_file.load_config(path, explicit=path is not None).server


def check_config(
    file: Annotated[Path, typer.Argument(help="The TOML config file to check.")],
    broker_user: Annotated[Optional[str], typer.Option(help="The user the broker runs as, to judge which rules can match. Default: parrot-mcp if you are root and it exists, else you.")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Validate a config file and print the effective policy. Exit 0 if valid, 2 if not (also
    when a rule can never match: docs/configuration.md, 'Which peers can be attested')."""
    try:
        loaded = config_file.load_config(file)
        never = config_file.unmatchable_rules(loaded, broker_user)
    except ConfigError as exc:
        fail(as_json, exc.exit_code, str(exc), error={"reason": "invalid_config", "message": str(exc)})
    if never:
        msg = f"config {file}: a rule can never match: " + "; ".join(never)
        fail(as_json, ConfigError.exit_code, msg, "see docs/configuration.md, 'Which peers can be attested'",
             error={"reason": "rule_never_matches", "message": msg, "rules": never})
    desc = config_file.describe(loaded)
    if as_json:
        emit(True, desc)
        return
    typer.echo(f"config {desc['config']}: valid")
    typer.echo(f"policy: {desc['policy']}")
    for rule in desc["peers"]:
        details = "  ".join(f"{k}={v}" for k, v in rule.items() if k != "rule" and v not in ([], None))
        typer.echo(f"  {rule['rule']}: {details}")
    typer.echo(f"shared secret: {'configured' if desc['shared_secret'] else 'none'}")


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
                          config=config, load_config=load_config,
                          load_rules=lambda p: config_file.load_config(p, explicit=p is not None).rules)
    emit(as_json, doc.as_dict(rows), doc.render(rows))
    raise typer.Exit(EXIT_REFUSED if doc.failed(rows) else EXIT_OK)


# --------------------------------------------------------------------------- admin
admin_app = typer.Typer(help="Admin commands (the session needs the 'admin' scope: root's does).",
                        no_args_is_help=True)


@admin_app.command("sessions")
def admin_sessions(socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """List live sessions: instance, uid, pid, scopes, expiry (never tokens)."""
    with session(socket, as_json) as (client, _):
        emit_table(as_json, "sessions", client.list_sessions(),
                   f"{'INSTANCE':<20} {'UID':>6} {'PID':>8} {'ONLINE':<6} {'BIND':<7} {'EXPIRES':<24} SCOPES",
                   lambda r: f"{r.instance_id:<20} {r.uid:>6} {r.pid:>8} {'yes' if r.online else 'no':<6} "
                             f"{r.bind:<7} {r.expires_at:<24} {','.join(r.scopes)}")


@admin_app.command("revoke")
def admin_revoke(name: Annotated[str, typer.Argument(help="The instance whose session to revoke.")],
                 socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke the live session of instance NAME, on every connection."""
    with session(socket, as_json) as (client, _):
        revoked = client.revoke_session(name)
        emit(as_json, {"instance_id": name, "revoked": revoked}, f"revoked the session of {name}")


@admin_app.command("release")
def admin_release(name: Annotated[str, typer.Argument(help="The instance name to free, whoever owns it.")],
                  socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Free instance name NAME whoever owns it: its session ends and its unread mail is deleted."""
    with session(socket, as_json) as (client, _):
        res = client.admin_release(name)
        emit(as_json, res, f"released {res.instance_id} (owned by uid {res.owner_uid}; "
                           f"{res.dropped} unread message(s) deleted)")


# --------------------------------------------------------------------------- resources
resource_app = typer.Typer(help="Protected resources the broker serves (the session needs the "
                           "'resources' scope).", no_args_is_help=True)


@resource_app.command("get")
def resource_get(name: Annotated[str, typer.Argument(help="The resource name, e.g. 'instructions'.")],
                 socket: SocketOpt = None, as_json: JsonOpt = False) -> None:
    """Print resource NAME (its text as-is; with --json: name, content, sha256).

    Resources are files an operator puts in the broker's resources_dir; none is installed by
    default, and a missing one exits 1 saying so.
    """
    with session(socket, as_json) as (client, _):
        try:
            res = client.get_resource(name)
        except ParrotError as exc:
            if exc.reason != "resource_not_found":
                raise
            fail(as_json, exc.exit_code, f"the broker has no resource named {name!r} (code {exc.code}, {exc.reason})",
                 "Resources are files an operator installs in the broker's resources_dir (default "
                 "/etc/parrot-ipc/resources; docs/operations.md). None is installed by default; without "
                 "'instructions', 'parrot-ipc mcp' uses generic instructions.",
                 {"code": exc.code, "reason": exc.reason, "message": exc.message, "data": exc.data})
        if as_json:
            emit(True, res)
        else:
            sys.stdout.write(res.content)


# --------------------------------------------------------------------------- audit
def audit_line(raw: str) -> str:
    """One audit JSON line made readable: ``TS  EVENT  key=value ...``; a line that is not a
    JSON object is returned as-is."""
    try:
        ev = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw
    if not isinstance(ev, dict):
        return raw
    ts, name = ev.pop("ts", "-"), ev.pop("event", "?")
    return f"{ts}  {name:<20} " + " ".join(f"{k}={v}" for k, v in ev.items())


def audit(
    file: Annotated[Path, typer.Argument(help="An audit log written by 'serve --audit-log'.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines as they come.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print an audit log readably: time, event, then its fields."""
    try:
        f = file.open("r")
    except OSError as exc:
        fail(as_json, EXIT_USAGE, f"cannot read {file}: {exc.strerror}")
    with f:
        try:
            while True:
                line = f.readline()
                if line:
                    typer.echo(line.rstrip("\n") if as_json else audit_line(line.rstrip("\n")))
                elif follow:
                    time.sleep(0.25)  # tail -f: poll the file for new lines every 0.25 s
                else:
                    return
        except KeyboardInterrupt:
            return
