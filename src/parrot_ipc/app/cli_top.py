"""``parrot-ipc top``: a live view of the broker for operators (rich's ``Live``), from the admin
method ``admin_stats`` (``docs/protocol.md``): instances (online, queue depth, last seen),
messages per second in and out, connections per UID, and the last audit events (refusals, rate
limits). Metadata only: the broker never sends message content in ``admin_stats``.

``--once`` prints one frame; ``--once --json`` one JSON snapshot, for scripts; ``--json`` alone
prints one compact JSON line per refresh. The session needs the ``admin`` scope (root's has it).
Exit codes as in :mod:`parrot_ipc.app.cli_output`.
"""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..core import protocol as p
from ..errors import ErrorCode, ParrotError
from .cli_output import JsonOpt, SocketOpt, emit, fail, session

ADMIN_HINT = ("'top' needs the 'admin' scope: root's session has it (sudo parrot-ipc register NAME), "
              "or a [[peers]] rule that grants 'admin' (docs/configuration.md).")


def _fields(fields: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items())


def render(stats: p.AdminStatsResult) -> RenderableType:
    """One frame of ``top`` for ``stats``: a header line, then the instances, connections per
    UID and recent audit events tables."""
    head = Text(f"parrot-ipc  {stats.now}  up {stats.uptime_s:.0f} s  connections {stats.connections}  "
                f"online sessions {stats.live_sessions}\n"
                f"messages/s in {stats.messages_in_per_s:.1f}  out {stats.messages_out_per_s:.1f}  "
                f"(last {stats.rate_window_s:g} s; totals in {stats.messages_in_total}, "
                f"out {stats.messages_out_total})")
    inst = Table(title="instances", title_justify="left", expand=True)
    for col in ("INSTANCE", "ONLINE", "QUEUED", "LAST SEEN"):
        inst.add_column(col, justify="right" if col == "QUEUED" else "left")
    for i in stats.instances:
        inst.add_row(i.instance_id, "yes" if i.online else "no", str(i.queued), i.last_seen)
    uids = Table(title="connections per uid", title_justify="left")
    uids.add_column("UID", justify="right")
    uids.add_column("CONNECTIONS", justify="right")
    for u in stats.connections_by_uid:
        uids.add_row(str(u.uid), str(u.connections))
    events = Table(title="recent audit events", title_justify="left", expand=True)
    for col in ("TIME", "EVENT", "FIELDS"):
        events.add_column(col)
    for ev in reversed(stats.recent_events):  # newest first
        events.add_row(ev.ts, ev.event, _fields(ev.fields))
    return Group(head, inst, uids, events)


def top(
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, max=60,
                                            help="Seconds between refreshes (0.2-60).")] = 1.0,
    events: Annotated[int, typer.Option("--events", min=0, max=100,
                                        help="How many recent audit events to show (0-100).")] = 15,
    socket: SocketOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Watch the broker: instances, messages per second, connections per UID, recent audit events.

    Refreshes every --interval seconds until Ctrl-C. Needs a session with the 'admin' scope.
    Shows metadata only, never message content. --once --json prints one snapshot for scripts.
    """
    with session(socket, as_json) as (client, _):
        try:
            stats = client.admin_stats(max_events=events)
        except ParrotError as exc:
            if exc.code != ErrorCode.FORBIDDEN:
                raise
            fail(as_json, exc.exit_code, f"{exc.message} (code {exc.code}, {exc.reason})", ADMIN_HINT,
                 {"code": exc.code, "reason": exc.reason, "message": exc.message, "data": exc.data})
        if once:
            if as_json:
                emit(True, stats)
            else:
                Console().print(render(stats))
            return
        try:
            if as_json:
                while True:
                    typer.echo(msgspec.json.encode(stats).decode())
                    time.sleep(interval)  # top(1): one snapshot per interval
                    stats = client.admin_stats(max_events=events)
            with Live(render(stats), refresh_per_second=4, screen=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(client.admin_stats(max_events=events)))
        except KeyboardInterrupt:
            return
