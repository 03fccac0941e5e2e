"""Root only. Issue 13, finding 3: the ``executables`` rule holds after exec(2).

A second Unix user's /usr/bin/python3 connects, passes an ``executables = ["/usr/bin/python3*"]``
rule, moves the socket to fd 3 and ``execv("/usr/bin/socat", ["socat", "-", "FD:3"])``: socat
now speaks on a connection the policy admitted for python3. Before issue 13 the broker answered
it (socat got a token and sent); now the next request is refused with -32001
``peer_exe_changed`` and audited, while socat connecting by itself is still refused at accept.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

SYSTEM_PYTHON = "/usr/bin/python3"
TIMEOUT_S = 30.0

#: python3 runs STEPS on the connection, prints each response, then execs socat on fd 3.
EXEC_SCRIPT = r'''
import json, os, socket, sys
path, steps, socat = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
f = s.makefile("rb")
for i, (method, params) in enumerate(steps, 1):
    req = {"jsonrpc": "2.0", "id": i, "method": method}
    if params is not None:
        req["params"] = params
    s.sendall((json.dumps(req) + "\n").encode())
    resp = json.loads(f.readline())
    if isinstance(resp.get("result"), dict) and "token" in resp["result"]:
        resp["result"]["token"] = "<redacted>"
    print(json.dumps({"who": "python3", **resp}), flush=True)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)  # it survives the exec (dup2(3, 3) alone would keep close-on-exec)
os.execv(socat, ["socat", "-t", "1", "-", "FD:3"])
'''


@pytest.fixture(scope="module")
def u2(accounts) -> Iterator[Any]:
    with accounts.user("pex") as pw:
        yield pw


@pytest.fixture
def exe_broker(broker, u2) -> Iterator[tuple[str, Path, Path]]:
    parent = Path(tempfile.mkdtemp(prefix="pipc-ex-"))
    parent.chmod(0o755)
    try:
        cfg, audit, script = parent / "config.toml", parent / "audit.jsonl", parent / "exec.py"
        cfg.write_text(f'[[peers]]\nname = "python-only"\nuids = [{u2.pw_uid}]\nexecutables = ["/usr/bin/python3*"]\n'
                       '\n[[peers]]\nname = "ops"\nuids = [0]\n')
        cfg.chmod(0o644)
        script.write_text(EXEC_SCRIPT)
        script.chmod(0o755)
        sock = str(parent / "run" / "mcp.sock")
        broker(sock, "--config", str(cfg), "--audit-log", str(audit))
        Path(sock).parent.chmod(0o755)
        Path(sock).chmod(0o666)  # open to everyone: the policy is what refuses
        yield sock, audit, script
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _socat() -> str:
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is not installed (.ci/run installs it)")
    return socat


def _exec_then_socat(u2: Any, sock: str, script: Path, python_steps: list[Any], socat_line: dict[str, Any]) -> list[dict]:
    """python3 runs ``python_steps``, execs socat, socat sends ``socat_line``; every response."""
    res = subprocess.run(["runuser", "-u", u2.pw_name, "--", SYSTEM_PYTHON, str(script), sock,
                          json.dumps(python_steps), _socat()],
                         input=json.dumps(socat_line) + "\n", capture_output=True, text=True, timeout=TIMEOUT_S,
                         cwd="/")
    assert res.returncode == 0, res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(out) == len(python_steps) + 1, (res.stdout, res.stderr)
    return out


def _events(audit: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, audit.read_text().splitlines()) if e["event"] == name]


def test_python_that_execs_socat_after_get_token_loses_its_session(u2, exe_broker) -> None:
    sock, audit, script = exe_broker
    out = _exec_then_socat(u2, sock, script, [["get_token", {"instance_id": "py"}]],
                           {"jsonrpc": "2.0", "id": 9, "method": "send",
                            "params": {"to": "py", "content": "sent by socat"}})
    py, sc = out
    assert py["who"] == "python3" and py["result"]["instance_id"] == "py"
    assert sc["id"] == 9 and (sc["error"]["code"], sc["error"]["data"]["reason"]) == (-32001, "peer_exe_changed")
    (ev,) = _events(audit, "peer_exe_changed")
    assert ev["exe_was"].startswith("/usr/bin/python3") and ev["exe_now"] == "/usr/bin/socat"
    assert ev["uid"] == u2.pw_uid and ev["instance"] == "py"
    assert [e["why"] for e in _events(audit, "session_ended")] == ["peer_exe_changed"]
    assert not [e for e in _events(audit, "token_issued") if e["uid"] == u2.pw_uid][1:]


def test_socat_that_inherits_an_admitted_connection_gets_no_token(u2, exe_broker) -> None:
    sock, audit, script = exe_broker
    # the ping makes sure the broker admitted python3 (accept is asynchronous) before the exec
    ping, sc = _exec_then_socat(u2, sock, script, [["ping", None]],
                                {"jsonrpc": "2.0", "id": 1, "method": "get_token", "params": {"instance_id": "sc"}})
    assert ping["result"] == "pong"
    assert (sc["error"]["code"], sc["error"]["data"]["reason"]) == (-32001, "peer_exe_changed")
    assert not _events(audit, "token_issued")
    # and socat connecting by itself is refused at accept, as before
    res = subprocess.run(["runuser", "-u", u2.pw_name, "--", _socat(), "-t", "1", "-", f"UNIX-CONNECT:{sock}"],
                         input='{"jsonrpc":"2.0","id":1,"method":"get_token","params":{"instance_id":"sc"}}\n',
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    (line,) = res.stdout.splitlines()
    err = json.loads(line)["error"]
    assert (err["code"], err["data"]["reason"]) == (-32002, "peer_not_allowed")
