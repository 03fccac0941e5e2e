"""``parrot-ipc doctor``: all PASS on a good runtime directory next to a live broker; FAIL and
exit 1 on a symlinked runtime directory, a 0755 one, one owned by another user, a loose
socket; and each check's verdicts on crafted inputs (state, database, units, LSM).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from parrot_ipc.app import doctor
from parrot_ipc.app.cli import load_config

GOOD_ROWS = ("runtime dir", "socket", "ping", "config", "state dir")


def _doctor(socket_path: str, state_dir: Path, config: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARROT_")}
    res = subprocess.run([sys.executable, "-m", "parrot_ipc", "doctor", "--socket", socket_path,
                          "--state-dir", str(state_dir), "--config", str(config), "--json", *extra],
                         capture_output=True, text=True, timeout=60, env=env)
    doc: dict[str, Any] = json.loads(res.stdout)
    return res.returncode, doc


def _rows(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in doc["checks"]}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def config(tmp_path: Path) -> Path:
    c = tmp_path / "config.toml"
    c.write_text("[server]\nmax_frame_bytes = 65536\n")
    return c


def test_good_runtime_dir_passes(broker: Any, state_dir: Path, config: Path) -> None:
    bp = broker()
    rc, doc = _doctor(bp.socket_path, state_dir, config)
    rows = _rows(doc)
    for name in GOOD_ROWS:
        assert rows[name]["status"] == "PASS", rows[name]
    assert rows["database"]["status"] == "WARN"  # no parrot.db: skipped, not failed
    assert rc == (1 if any(r["status"] == "FAIL" for r in doc["checks"]) else 0)
    assert doc["ok"] is (rc == 0)


def test_human_table_has_a_fix_under_each_problem(broker: Any, state_dir: Path, config: Path) -> None:
    bp = broker()
    os.chmod(bp.socket_path, 0o644)
    res = subprocess.run([sys.executable, "-m", "parrot_ipc", "doctor", "--socket", bp.socket_path,
                          "--state-dir", str(state_dir), "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    sock = next(i for i, line in enumerate(lines) if line.startswith("socket "))
    assert "FAIL" in lines[sock] and "0644" in lines[sock]
    assert f"fix: chmod 0600 {bp.socket_path}" in lines[sock + 1]


def test_runtime_dir_mode_0755_fails(broker: Any, state_dir: Path, config: Path) -> None:
    bp = broker()
    run = os.path.dirname(bp.socket_path)
    os.chmod(run, 0o755)
    try:
        rc, doc = _doctor(bp.socket_path, state_dir, config)
    finally:
        os.chmod(run, 0o700)
    row = _rows(doc)["runtime dir"]
    assert rc == 1 and row["status"] == "FAIL"
    assert "0755" in row["detail"] and f"chmod 0700 {run}" in row["fix"]
    assert _rows(doc)["ping"]["status"] == "WARN"  # never talk through an unsafe path


def test_symlinked_runtime_dir_fails(broker: Any, state_dir: Path, config: Path, tmp_path: Path) -> None:
    bp = broker()
    link = tmp_path / "link"
    link.symlink_to(os.path.dirname(bp.socket_path))
    rc, doc = _doctor(str(link / "mcp.sock"), state_dir, config)
    row = _rows(doc)["runtime dir"]
    assert rc == 1 and row["status"] == "FAIL"
    assert "symlink" in row["detail"] and f"rm {link}" in row["fix"]


@pytest.mark.root
def test_runtime_dir_of_another_owner_fails(broker: Any, state_dir: Path, config: Path) -> None:
    bp = broker()
    run = os.path.dirname(bp.socket_path)
    os.chown(run, 65534, 65534)
    try:
        rc, doc = _doctor(bp.socket_path, state_dir, config)
    finally:
        os.chown(run, 0, 0)
    row = _rows(doc)["runtime dir"]
    assert rc == 1 and row["status"] == "FAIL"
    assert "uid 65534" in row["detail"] and row["fix"].startswith("chown ")


def test_nothing_listening_fails_ping(tmp_path: Path, state_dir: Path, config: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = str(run / "mcp.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)  # bound, never listening: connect is refused
        os.chmod(path, 0o600)
        rc, doc = _doctor(path, state_dir, config)
    rows = _rows(doc)
    assert rows["runtime dir"]["status"] == rows["socket"]["status"] == "PASS"
    assert rows["ping"]["status"] == "FAIL" and rc == 1


def test_missing_socket_fails(tmp_path: Path, state_dir: Path, config: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    rc, doc = _doctor(str(run / "mcp.sock"), state_dir, config)
    assert _rows(doc)["socket"]["status"] == "FAIL" and rc == 1


# --------------------------------------------------------------------------- single checks
def test_invalid_config_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_frame_bytes = 'huge'\n")
    row = doctor.check_config(bad, os.geteuid(), load_config)
    assert row.status == "FAIL" and str(bad) in row.detail
    assert doctor.check_config(tmp_path / "absent.toml", os.geteuid(), load_config).status == "FAIL"


def test_state_dir_checks(tmp_path: Path) -> None:
    euid = os.geteuid()
    assert doctor.check_state_dir(str(tmp_path / "absent"), euid).status == "WARN"
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o700)
    os.chmod(loose, 0o755)
    assert doctor.check_state_dir(str(loose), euid).status == "FAIL"
    link = tmp_path / "link"
    link.symlink_to(loose)
    assert doctor.check_state_dir(str(link), euid).status == "FAIL"
    os.chmod(loose, 0o700)
    assert doctor.check_state_dir(str(loose), euid).status == "PASS"


def test_database_quick_check(tmp_path: Path) -> None:
    assert doctor.check_database(str(tmp_path)).status == "WARN"  # absent: the store may not exist yet
    con = sqlite3.connect(tmp_path / doctor.DB_NAME)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    row = doctor.check_database(str(tmp_path))
    assert row.status == "PASS", row
    (tmp_path / doctor.DB_NAME).write_bytes(b"this is not an SQLite database" * 100)
    assert doctor.check_database(str(tmp_path)).status == "FAIL"


def test_database_is_opened_read_only(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / doctor.DB_NAME)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.commit()
    con.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    mtime = (tmp_path / doctor.DB_NAME).stat().st_mtime_ns
    assert doctor.check_database(str(tmp_path)).status == "PASS"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / doctor.DB_NAME).stat().st_mtime_ns == mtime


def test_units_check(tmp_path: Path) -> None:
    sysdir, userdir = tmp_path / "system", tmp_path / "user"
    sysdir.mkdir()
    userdir.mkdir()
    assert doctor.check_units([str(sysdir)], [str(userdir)]).status == "WARN"
    (sysdir / "parrot-ipc.socket").write_text("")
    assert doctor.check_units([str(sysdir)], [str(userdir)]).status == "FAIL"
    (sysdir / "parrot-ipc.service").write_text("")
    row = doctor.check_units([str(sysdir)], [str(userdir)])
    assert row.status == "PASS" and str(sysdir) in row.detail


def test_lsm_check(tmp_path: Path) -> None:
    assert doctor.check_lsm(str(tmp_path)).status == "WARN"
    (tmp_path / "lsm").write_text("lockdown,capability,landlock,yama")
    assert doctor.check_lsm(str(tmp_path)).status == "PASS"
    (tmp_path / "lsm").write_text("lockdown,capability,landlock,yama,apparmor")
    (tmp_path / "apparmor").mkdir()
    (tmp_path / "apparmor" / "profiles").write_text("nvidia_modprobe (enforce)\n")
    row = doctor.check_lsm(str(tmp_path))
    assert row.status == "WARN" and "apparmor_parser -r" in row.fix
    (tmp_path / "apparmor" / "profiles").write_text("nvidia_modprobe (enforce)\nparrot-ipc (enforce)\n")
    row = doctor.check_lsm(str(tmp_path))
    assert row.status == "PASS" and "parrot-ipc (enforce)" in row.detail


def test_render_and_json_shapes() -> None:
    rows = [doctor.Check("a", "PASS", "fine"), doctor.Check("bbb", "FAIL", "broken", "do this")]
    text = doctor.render(rows)
    assert text.splitlines() == ["CHECK  STATUS  DETAIL", "a      PASS    fine", "bbb    FAIL    broken",
                                 "               fix: do this"]
    assert doctor.as_dict(rows)["ok"] is False and doctor.failed(rows)
    assert doctor.as_dict(rows[:1]) == {"ok": True, "checks": [{"name": "a", "status": "PASS", "detail": "fine",
                                                                "fix": ""}]}


def test_state_dir_details_name_the_path_and_what_was_found(tmp_path: Path) -> None:
    euid = os.geteuid()
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o755)
    row = doctor.check_state_dir(str(loose), euid)
    assert f"state directory {loose} must be owned by" in row.detail and "mode 0755" in row.detail
    assert row.fix.endswith(f"chmod 0700 {loose}")
    link = tmp_path / "link"
    link.symlink_to(loose)
    row = doctor.check_state_dir(str(link), euid)
    assert f"state directory {link} is a symlink" in row.detail and "StateDirectory=" in row.fix


def test_runtime_dir_and_socket_of_the_wrong_kind(tmp_path: Path) -> None:
    euid = os.geteuid()
    not_a_dir = tmp_path / "run"
    not_a_dir.write_text("x")
    row = doctor.check_runtime_dir(str(not_a_dir / "mcp.sock"), euid)
    assert row.status == "FAIL" and "is a regular file" in row.detail and f"rm {not_a_dir}" in row.fix
    run = tmp_path / "run2"
    run.mkdir(mode=0o700)
    (run / "mcp.sock").write_text("not a socket")
    row = doctor.check_socket(str(run / "mcp.sock"), euid)
    assert row.status == "FAIL" and "is a regular file" in row.detail and "inspect and remove" in row.fix
