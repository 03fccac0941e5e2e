"""End to end: ``parrot-ipc release NAME`` and ``parrot-ipc admin release NAME`` (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

EXIT_OK, EXIT_REFUSED = 0, 1


def test_release_and_admin_release_from_the_cli(broker, cli, tmp_path: Path) -> None:
    b = broker()
    ops, worker = tmp_path / "ops.session", tmp_path / "worker.session"
    assert cli(b.socket_path, ops, "register", "ops").returncode == EXIT_OK  # root: admin scope
    assert cli(b.socket_path, worker, "register", "worker").returncode == EXIT_OK
    assert cli(b.socket_path, ops, "send", "worker", "unread").returncode == EXIT_OK
    res = cli(b.socket_path, tmp_path / "none.session", "release", "worker", "--json")
    assert res.returncode == EXIT_OK, res.stderr
    assert json.loads(res.stdout)["dropped"] == 1
    gone = cli(b.socket_path, worker, "whoami")
    assert gone.returncode == EXIT_REFUSED and "token_invalid" in gone.stderr
    again = cli(b.socket_path, ops, "release", "worker")
    assert again.returncode == EXIT_REFUSED and "name_not_owned" in again.stderr
    assert cli(b.socket_path, worker, "register", "worker2").returncode == EXIT_OK
    adm = cli(b.socket_path, ops, "admin", "release", "worker2")
    assert adm.returncode == EXIT_OK and "released worker2" in adm.stdout, adm.stderr
