"""Root only: a second Unix user whose ``[[peers]]`` rule lacks ``resources`` never receives the
protected instructions, while root (the default-style rule) does.

The second user cannot use the test venv (it lives under /root), so its client is a
standard-library script run with /usr/bin/python3 through runuser: the kernel's SO_PEERCRED
then names that user. It calls ``get_resource`` directly, which is exactly what the bridge does
after it authenticates.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parrot_ipc import Client

pytestmark = pytest.mark.root

SYSTEM_PYTHON = "/usr/bin/python3"
PROTECTED = "CONFIDENTIAL-b41e: the protected instruction text.\n"

RPC = r'''
import json, socket, sys
path, steps = sys.argv[1], json.loads(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(path)
f = s.makefile("rwb")
out = []
for i, (method, params) in enumerate(steps, 1):
    f.write((json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode())
    f.flush()
    resp = json.loads(f.readline())
    res = resp.get("result")
    if isinstance(res, dict) and "token" in res:
        res["token"] = "<redacted>"
    out.append(resp)
print(json.dumps(out))
'''


@pytest.fixture
def second_user(accounts) -> Iterator[tuple[str, int]]:
    with accounts.user("ptr") as pw:
        yield pw.pw_name, pw.pw_uid


@pytest.fixture
def shared_dir(accounts) -> Iterator[Path]:
    with accounts.open_dir("pipc-res-") as d:
        yield d


def test_peer_without_the_resources_scope_never_receives_the_protected_text(
        broker, second_user: tuple[str, int], shared_dir: Path, write_resources) -> None:
    user, uid = second_user
    cfg, _res = write_resources(shared_dir, PROTECTED, f'''[[peers]]
name = "agents"
uids = [{uid}]
scopes = ["send", "receive", "list", "rename", "broadcast"]

[[peers]]
name = "root"
uids = [0]
scopes = ["send", "receive", "list", "rename", "broadcast", "resources", "admin"]
''')
    script = shared_dir / "rpc.py"
    script.write_text(RPC)
    script.chmod(0o755)
    sock = str(shared_dir / "run" / "mcp.sock")
    b = broker(sock, "--config", str(cfg))
    os.chmod(os.path.dirname(sock), 0o755)  # deliberately open: the policy is what refuses
    os.chmod(sock, 0o666)

    steps: list[Any] = [["get_token", {"instance_id": "agent-2"}], ["get_resource", {"name": "instructions"}],
                        ["whoami", {}]]
    run = subprocess.run(["runuser", "-u", user, "--", SYSTEM_PYTHON, str(script), sock, json.dumps(steps)],
                         capture_output=True, text=True, timeout=30, cwd=shared_dir)
    assert run.returncode == 0, run.stderr
    token, resource, who = json.loads(run.stdout)
    assert token["result"]["scopes"] == ["broadcast", "list", "receive", "rename", "send"]
    err = resource["error"]
    assert (err["code"], err["data"]["reason"], err["data"]["scope"]) == (-32002, "scope_missing", "resources")
    assert who["result"]["uid"] == uid
    assert PROTECTED.strip() not in run.stdout + run.stderr
    assert "CONFIDENTIAL" not in run.stdout + run.stderr

    # Root, under its own rule with the scope, reads it (the text is really there to be refused).
    with Client(sock) as c:
        c.get_token("root-1")
        assert c.get_resource("instructions").content == PROTECTED
    log = b.log_text()
    assert '"event":"scope_denied"' in log and f'"uid":{uid}' in log
    assert PROTECTED.strip() not in log  # the broker never logs resource content
