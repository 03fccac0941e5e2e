"""``parrot-ipc relay``: run the NATS JetStream relay of this host's broker (docs/federation.md).

The relay (:mod:`parrot_ipc.client.relay`) needs the optional ``relay`` extra (nats-py). Its
settings come from the config file: ``[server] node`` and the ``[relay]`` table; options
override them. The NATS credentials file must be private to the relay's user (0600 or 0400,
owned by it, one hard link), the rule of a secret file (:func:`parrot_ipc.os.files.read_private_file`):
a file others can read is refused before anything connects.
"""

from __future__ import annotations

import importlib.util
import logging
import ssl
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..client.relay import RelaySettings, run_relay
from ..core.config import RelayConfig
from ..errors import EXIT_UNREACHABLE, EXIT_USAGE, ConfigError, StartupError
from ..os.files import read_private_file
from ..os.paths import default_socket_path
from . import config_file
from .cli_output import SocketOpt, emit_table, session


def list_remote(socket: str | None, as_json: bool) -> None:
    """``parrot-ipc list --remote``: the remote nodes the broker had mail from since it started."""
    with session(socket, as_json) as (client, _):
        emit_table(as_json, "nodes", client.list_nodes(),
                   f"{'NODE':<20}  {'LAST SEEN':<24}  {'DELIVERED':>9}  REFUSED",
                   lambda r: f"{r.node:<20}  {r.last_seen:<24}  {r.delivered:>9}  {r.refused}",
                   empty="(no remote nodes seen since the broker started)")


def tls_context(cfg: RelayConfig) -> ssl.SSLContext | None:
    """The client TLS context of ``cfg`` (CA file, and the relay's certificate and key), or
    None when none of them is set (a ``tls://`` URL then uses the system CAs).

    Raises:
        StartupError: a file cannot be read or the key is not private (as a secret file).
    """
    if cfg.tls_ca_file is None and cfg.tls_cert_file is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca_file)
        if cfg.tls_cert_file is not None:
            if cfg.tls_key_file is not None:
                read_private_file(cfg.tls_key_file)  # refuse a key others can read
            ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"refusing to start: TLS files: {exc}") from None
    return ctx


def settings_from(loaded: config_file.LoadedConfig, socket: str | None, servers: list[str] | None,
                  credentials: str | None) -> RelaySettings:
    """The relay's settings from the loaded config and the command line's overrides.

    Raises:
        ConfigError: ``[server] node`` is not set.
        StartupError: the credentials file or the TLS key is unsafe or unreadable.
    """
    node = loaded.server.node
    if node is None:
        raise ConfigError("the relay needs a node name: set node = \"NAME\" under [server] in the config")
    cfg = loaded.relay
    creds_path = credentials or cfg.credentials_file
    creds = None if creds_path is None else read_private_file(creds_path)
    return RelaySettings(node=node, socket=socket or loaded.server.socket or default_socket_path(),
                         servers=servers or list(cfg.servers), credentials=creds, tls=tls_context(cfg),
                         stream=cfg.stream, batch=cfg.batch, ack_wait_s=cfg.ack_wait_s,
                         create_stream=cfg.create_stream)


def relay(
    socket: SocketOpt = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML config file ([server] node, [relay]).")] = None,  # noqa: UP045
    nats: Annotated[Optional[list[str]], typer.Option("--nats", help="NATS server URL (repeatable); default: [relay] servers.")] = None,  # noqa: UP045
    credentials: Annotated[Optional[str], typer.Option(help="NATS credentials file (0600); default: [relay] credentials_file.")] = None,  # noqa: UP045
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the relay between this host's broker and NATS JetStream until SIGTERM or SIGINT.

    It sends the outbox (mail to name@otherhost) to parrot.<node>.<name> and delivers mail for
    this node into the broker. Needs: [server] node in the config, the 'relay' scope (by
    default only the broker's own user), and the extra: pip install 'parrot-ipc[relay]'.
    """
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if importlib.util.find_spec("nats") is None:
        typer.echo("error: the relay needs nats-py: pip install 'parrot-ipc[relay]'", err=True)
        raise typer.Exit(EXIT_USAGE)
    try:
        loaded = config_file.load_config(config, explicit=config is not None)
        settings = settings_from(loaded, socket, nats, credentials)
    except (ConfigError, StartupError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    try:
        run_relay(settings)
    except OSError as exc:
        typer.echo(f"error: cannot reach NATS at {', '.join(settings.servers)}: {exc}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
