"""End to end: check-config, admin sessions|revoke, audit, and serve with a config and an audit log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARROT_")}
    return subprocess.run([sys.executable, "-m", "parrot_ipc", *args], capture_output=True, text=True,
                          env=env, timeout=30)


def test_check_config_prints_the_effective_policy(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\ntoken_ttl_s = 600\n\n[[peers]]\nname = "ops"\nusers = ["root"]\n'
                   'scopes = ["send", "admin"]\nmay_send_to = ["build-*"]\n')
    res = _cli("check-config", str(cfg))
    assert res.returncode == EXIT_OK, res.stderr
    assert "valid" in res.stdout and "ops:" in res.stdout and "build-*" in res.stdout
    doc = json.loads(_cli("check-config", str(cfg), "--json").stdout)
    assert doc["server"]["token_ttl_s"] == 600
    assert doc["peers"] == [{"rule": "ops", "uids": [0], "gids": [], "executables": [],
                             "scopes": ["admin", "send"], "may_send_to": ["build-*"], "bind": "uid",
                             "names": ["*"]}]


def test_check_config_names_the_bad_key_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[peers]]\nuids = [0]\nscopes = ["send", "teleport"]\n')
    res = _cli("check-config", str(cfg))
    assert res.returncode == EXIT_USAGE
    assert "peers[0].scopes[1]" in res.stderr and "teleport" in res.stderr
    cfg.write_text('[server]\nmax_frame_byte = 10\n')
    res = _cli("check-config", str(cfg))
    assert res.returncode == EXIT_USAGE and "max_frame_byte" in res.stderr


def test_serve_refuses_an_invalid_config_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[peers]]\nusers = ["no-such-user-here"]\n')
    res = _cli("serve", "--socket", str(tmp_path / "run" / "mcp.sock"), "--config", str(cfg))
    assert res.returncode == EXIT_USAGE
    assert res.stderr.strip().count("\n") == 0 and "no-such-user-here" in res.stderr
    assert not (tmp_path / "run").exists()


def test_admin_sessions_and_revoke_from_the_cli(broker, cli, tmp_path: Path) -> None:
    b = broker()
    ops, worker = tmp_path / "ops.session", tmp_path / "worker.session"
    assert cli(b.socket_path, ops, "register", "ops").returncode == EXIT_OK  # root: admin scope
    assert cli(b.socket_path, worker, "register", "worker").returncode == EXIT_OK
    res = cli(b.socket_path, ops, "admin", "sessions", "--json")
    rows = {r["instance_id"]: r for r in json.loads(res.stdout)["sessions"]}
    assert set(rows) == {"ops", "worker"} and "admin" in rows["ops"]["scopes"]
    assert "token" not in res.stdout
    human = cli(b.socket_path, ops, "admin", "sessions")
    assert "worker" in human.stdout and "INSTANCE" in human.stdout
    assert cli(b.socket_path, ops, "admin", "revoke", "worker").returncode == EXIT_OK
    gone = cli(b.socket_path, worker, "whoami")
    assert gone.returncode == EXIT_REFUSED and "token_invalid" in gone.stderr
    missing = cli(b.socket_path, ops, "admin", "revoke", "nobody")
    assert missing.returncode == EXIT_REFUSED and "no_such_session" in missing.stderr


def test_audit_command_prints_the_audit_log_readably(broker, cli, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    b = broker(None, "--audit-log", str(audit))
    assert cli(b.socket_path, tmp_path / "s", "register", "auditee").returncode == EXIT_OK
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
    res = _cli("audit", str(audit))
    assert res.returncode == EXIT_OK
    issued = [line for line in res.stdout.splitlines() if "token_issued" in line]
    assert issued and "instance=auditee" in issued[0] and issued[0][:4].isdigit()
    raw = _cli("audit", str(audit), "--json").stdout.splitlines()
    assert any(json.loads(line)["event"] == "token_issued" for line in raw)
