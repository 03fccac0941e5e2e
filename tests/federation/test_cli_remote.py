"""The CLI side of federation: ``parrot-ipc list --remote`` shows the nodes seen, and
``parrot-ipc doctor`` checks the relay (NATS reachable, stream present, consumer lag)."""

from __future__ import annotations

import json
import subprocess
import sys

from fed_harness import Node, clean_env, drain


def _cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**clean_env(), "PARROT_IPC_SOCKET": node.socket, "PARROT_IPC_SESSION": str(node.root / "cli.session")}
    return subprocess.run([sys.executable, "-m", "parrot_ipc", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def _doctor(node: Node) -> dict:
    res = _cli(node, "doctor", "--config", str(node.config), "--state-dir", str(node.root / "state"), "--json")
    rows = [r for r in json.loads(res.stdout)["checks"] if r["name"] in ("relay", "config")]
    assert [r["name"] for r in rows] == ["config", "relay"], rows
    row = rows[1]
    return row


def test_list_remote_shows_the_nodes_seen(nodes) -> None:
    h1, h2 = nodes("h1"), nodes("h2")
    assert _cli(h2, "register", "ops").returncode == 0
    empty = _cli(h2, "list", "--remote", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == {"nodes": []}
    alice, bob = h1.client("alice"), h2.client("bob")
    for i in range(3):
        alice.send("bob@h2", f"m{i}")
    assert len(drain(bob, 3, 15)) == 3
    res = _cli(h2, "list", "--remote", "--json")
    (row,) = json.loads(res.stdout)["nodes"]
    assert (row["node"], row["delivered"], row["refused"]) == ("h1", 3, 0)
    human = _cli(h2, "list", "--remote")
    assert human.returncode == 0 and "h1" in human.stdout and "Traceback" not in human.stderr


def test_doctor_checks_the_relay(nodes) -> None:
    h1 = nodes("h1", relay=False)
    assert _doctor(h1)["status"] == "FAIL"  # stream missing: no relay has made it
    h1.start_relay()
    row = _doctor(h1)
    assert row["status"] == "PASS" and "lag 0" in row["detail"], row
    h1.nats.stop()
    row = _doctor(h1)
    assert row["status"] == "FAIL" and "not reachable" in row["detail"], row
