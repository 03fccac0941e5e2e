"""``parrot-ipc top`` end to end against a real broker: ``--once --json``, the live ``--json``
stream, one rendered frame, and the ``admin`` scope it needs (issue 16, "Also")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from parrot_ipc import Client, ParrotError
from parrot_ipc.app.cli_top import render
from parrot_ipc.core import protocol as p

SECRET = "SECRET-CONTENT-7c1d"


def _snapshot(cli, sock: str, session: Path) -> dict:
    res = cli(sock, session, "top", "--once", "--json", "--events", "50")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_top_once_json_counts_messages_connections_and_refusals_without_content(broker, cli, tmp_path: Path) -> None:
    b = broker()
    ops, alice = tmp_path / "ops.session", tmp_path / "alice.session"
    assert cli(b.socket_path, ops, "register", "ops").returncode == 0  # root: admin scope
    assert cli(b.socket_path, alice, "register", "alice").returncode == 0
    assert cli(b.socket_path, ops, "send", "alice", SECRET).returncode == 0
    with Client(b.socket_path) as raw:  # a refusal for the audit ring: bad params
        frame = raw.call("ping")
        assert frame == "pong"
        with pytest.raises(ParrotError) as refused:  # an unknown method: audited as bad_request
            raw.call("teleport")
        assert refused.value.code == -32601
        snap = _snapshot(cli, b.socket_path, ops)
        assert {"uid": os.geteuid(), "connections": 2} in snap["connections_by_uid"]  # raw + top's own
    rows = {i["instance_id"]: i for i in snap["instances"]}
    assert rows["alice"]["queued"] == 1 and rows["ops"]["online"] is True
    assert snap["messages_in_total"] == 1 and snap["messages_out_total"] == 0
    assert snap["messages_in_per_s"] > 0
    events = [e["event"] for e in snap["recent_events"]]
    assert "bad_request" in events, events
    bad = next(e for e in snap["recent_events"] if e["event"] == "bad_request")
    assert bad["fields"]["method"] == "teleport" and bad["fields"]["uid"] == os.geteuid()
    assert "peer_admitted" not in events and snap["audit_counts"]["peer_admitted"] >= 4
    assert SECRET not in json.dumps(snap)
    assert cli(b.socket_path, alice, "recv").returncode == 0  # receive + ack
    after = _snapshot(cli, b.socket_path, ops)
    assert after["messages_out_total"] == 1 and after["messages_out_per_s"] > 0
    # One frame, rendered as the live view draws it.
    console = Console(record=True, width=140)
    console.print(render(msgspec.convert(after, p.AdminStatsResult)))
    frame = console.export_text()
    assert "instances" in frame and "alice" in frame and "ops" in frame
    assert "connections per uid" in frame and "recent audit events" in frame
    assert "totals in 1, out 1" in frame
    assert SECRET not in frame


def test_top_streams_a_json_line_per_refresh(broker, tmp_path: Path, cli) -> None:
    b = broker()
    ops = tmp_path / "ops.session"
    assert cli(b.socket_path, ops, "register", "ops").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARROT_")}
    env |= {"PARROT_IPC_SOCKET": b.socket_path, "PARROT_IPC_SESSION": str(ops)}
    with subprocess.Popen([sys.executable, "-m", "parrot_ipc", "top", "--json", "--interval", "0.2"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True) as proc:
        try:
            first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    assert second["uptime_s"] > first["uptime_s"]


def test_top_without_the_admin_scope_exits_1_and_says_which_scope(broker, cli, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[peers]]\nname = "agents"\nuids = [{os.geteuid()}]\nscopes = ["send", "receive", "list"]\n')
    b = broker(None, "--config", str(cfg))
    me = tmp_path / "me.session"
    assert cli(b.socket_path, me, "register", "me").returncode == 0
    res = cli(b.socket_path, me, "top", "--once")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "-32002" in res.stderr and "needs the 'admin' scope" in res.stderr
