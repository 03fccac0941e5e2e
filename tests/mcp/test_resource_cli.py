"""``parrot-ipc resource get`` and ``get_resource`` end to end: a real broker reading a real
``resources_dir``, including files it must refuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

TEXT = "Protected instructions: be brief.\n"


@pytest.fixture
def started(broker, tmp_path: Path, write_resources):  # -> (BrokerProcess, resources dir)
    cfg, res = write_resources(tmp_path, TEXT)
    return broker(None, "--config", str(cfg)), res


def test_resource_get_prints_the_text_and_json_has_the_sha256(started, cli, tmp_path: Path) -> None:
    b, _ = started
    session = tmp_path / "s.json"
    assert cli(b.socket_path, session, "register", "agent-1").returncode == 0
    out = cli(b.socket_path, session, "resource", "get", "instructions")
    assert (out.returncode, out.stdout) == (0, TEXT)
    doc = json.loads(cli(b.socket_path, session, "resource", "get", "instructions", "--json").stdout)
    assert doc == {"name": "instructions", "content": TEXT, "sha256": hashlib.sha256(TEXT.encode()).hexdigest()}


def test_resource_get_unknown_bad_and_unsafe(started, cli, tmp_path: Path) -> None:
    b, res = started
    session = tmp_path / "s.json"
    assert cli(b.socket_path, session, "register", "agent-1").returncode == 0
    missing = cli(b.socket_path, session, "resource", "get", "nope")
    assert missing.returncode == 1 and "-32005" in missing.stderr and "resource_not_found" in missing.stderr
    bad = cli(b.socket_path, session, "resource", "get", "../config.toml")
    assert bad.returncode == 1 and "-32602" in bad.stderr
    (res / "open").write_text("writable by the group")
    (res / "open").chmod(0o664)
    (res / "link").symlink_to(res / "instructions")
    for name in ("open", "link"):
        refused = cli(b.socket_path, session, "resource", "get", name, "--json")
        err = json.loads(refused.stdout)["error"]
        assert (refused.returncode, err["code"], err["reason"]) == (1, -32005, "resource_refused")
        assert "writable" not in refused.stdout and TEXT not in refused.stdout
    log = b.log_text()
    assert "refusing to serve resource 'open'" in log and "is a symlink" in log
