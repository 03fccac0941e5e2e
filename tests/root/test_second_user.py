"""Root only: a second Unix user against a root broker, and a spoofed ``from``.

A throwaway system user is created with useradd and removed with userdel. Its client is a
standard-library script run with /usr/bin/python3 (the root venv is not readable by others),
so the kernel's SO_PEERCRED for its connections carries that user's uid.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from parrot_ipc import Client

pytestmark = pytest.mark.root

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT_TIMEOUT_S = 30.0

# Exit codes of the client script.
EXIT_READ = 0  # connected; what it read is in the JSON on stdout
EXIT_CONNECT_FAILED = 3  # connect(2) failed; errno name in the JSON
EXIT_USAGE = 2

CLIENT_SCRIPT = r'''
"""A parrot-ipc client using only the standard library. Prints one JSON object on stdout.

usage: client.py refused SOCKET [TOKEN_FILE]   connect; with a token file send authenticate and whoami
                                               (then half-close); read everything until the broker closes
       client.py spoof SOCKET                  register as mallory, send to victim claiming to be admin
"""
import errno
import json
import os
import socket
import sys


def out(code, **fields):
    fields.update(uid=os.getuid(), euid=os.geteuid(), pid=os.getpid())
    print(json.dumps(fields))
    sys.exit(code)


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
    except OSError as exc:
        out(3, stage="connect", errno=errno.errorcode.get(exc.errno, str(exc.errno)), error=exc.strerror)
    return s


def frame(rid, method, params=None):
    req = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        req["params"] = params
    return (json.dumps(req) + "\n").encode()


def read_to_eof(s):
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return buf, "reset"
        if not chunk:
            return buf, "eof"
        buf += chunk


def read_line(s, buf):
    while b"\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed early: %r" % buf)
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return json.loads(line), rest


def refused(path, token_file=None):
    s = connect(path)
    sent, send_error = [], None
    if token_file is not None:
        with open(token_file) as f:
            token = f.read().strip()
        try:
            s.sendall(frame(1, "authenticate", {"token": token}) + frame(2, "whoami"))
            sent = ["authenticate", "whoami"]
            s.shutdown(socket.SHUT_WR)  # done sending: an admitted peer is answered, then closed
        except OSError as exc:
            send_error = errno.errorcode.get(exc.errno, str(exc.errno))
    data, how = read_to_eof(s)
    out(0, stage="read", lines=data.decode("utf-8", "replace").splitlines(), closed=how,
        sent=sent, send_error=send_error)


def spoof(path):
    s = connect(path)
    s.sendall(frame(1, "get_token", {"instance_id": "mallory"}))
    tok, buf = read_line(s, b"")
    s.sendall(frame(2, "send", {"to": "victim", "content": "x", "from": "admin", "from_id": "admin"}))
    sent, buf = read_line(s, buf)
    s.close()
    tok.pop("result", None)  # never print a token
    out(0, stage="spoof", get_token=tok, send=sent)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(2)
    if sys.argv[1] == "refused":
        refused(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "spoof":
        spoof(sys.argv[2])
    sys.exit(2)
'''


@dataclass
class SecondUser:
    name: str
    uid: int
    gid: int
    workdir: Path  # world-readable (0755) temp dir holding the client script
    script: Path

    def run(self, *args: str, as_root: bool = False) -> tuple[int, dict]:
        """Run the client script as this user (or as root); returns (exit code, its JSON)."""
        cmd = [SYSTEM_PYTHON, str(self.script), *args]
        if not as_root:
            cmd = [*_as_user_prefix(self.name, self.uid, self.gid), *cmd]
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=SCRIPT_TIMEOUT_S, cwd=self.workdir)
        assert res.returncode in (EXIT_READ, EXIT_CONNECT_FAILED), (
            f"{cmd}: rc={res.returncode}\nstdout={res.stdout}\nstderr={res.stderr}")
        doc = json.loads(res.stdout)
        assert doc["uid"] == (0 if as_root else self.uid), doc  # it really ran as that user
        return res.returncode, doc


def _as_user_prefix(name: str, uid: int, gid: int) -> list[str]:
    if shutil.which("runuser"):
        return ["runuser", "-u", name, "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    pytest.fail("neither runuser nor setpriv is installed; cannot run as the second user")


@pytest.fixture(scope="module")
def second_user(accounts) -> Iterator[SecondUser]:
    """A fresh system user (no home, nologin shell) and a world-readable dir with the client script."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the second user's client needs a system Python")
    with accounts.open_dir("pipc-u2-") as workdir, accounts.user("parrot-t2") as pw:
        script = workdir / "client.py"
        script.write_text(CLIENT_SCRIPT)
        script.chmod(0o755)
        yield SecondUser(pw.pw_name, pw.pw_uid, pw.pw_gid, workdir, script)


@pytest.fixture
def open_parent(accounts) -> Iterator[Path]:
    """A fresh parent dir with mode 0755: only the runtime dir's own 0700 can block the second user."""
    with accounts.open_dir("pipc-p-") as d:
        yield d


@pytest.fixture
def root_broker(open_parent: Path, broker) -> Callable[[], object]:
    """A broker run by root with its socket at <0755 parent>/run/mcp.sock."""
    def start():  # -> BrokerProcess
        return broker(str(open_parent / "run" / "mcp.sock"))
    return start


def _assert_refusal_only(doc: dict) -> None:
    """Exactly one line, the -32002 peer refusal with id null, then the connection closed."""
    assert doc["stage"] == "read", doc
    assert len(doc["lines"]) == 1, doc
    line = json.loads(doc["lines"][0])
    assert line["jsonrpc"] == "2.0" and line["id"] is None and "result" not in line
    assert line["error"]["code"] == -32002
    assert line["error"]["data"]["reason"] == "peer_uid_not_allowed"
    assert doc["closed"] in ("eof", "reset")


def _refused_audit_lines(log: str, uid: int) -> list[dict]:
    events = []
    for raw in log.splitlines():
        if "parrot_ipc.audit" not in raw:
            continue
        ev = json.loads(raw.split("parrot_ipc.audit: ", 1)[1])
        if ev.get("uid") == uid:
            events.append(ev)
    return events


# --------------------------------------------------------------------------- (a)
def test_a_second_user_cannot_connect_through_0700_dir(second_user: SecondUser, root_broker) -> None:
    b = root_broker()
    run_dir = os.path.dirname(b.socket_path)
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.dirname(run_dir)).st_mode) == 0o755
    rc, doc = second_user.run("refused", b.socket_path)
    assert rc == EXIT_CONNECT_FAILED and doc["stage"] == "connect"
    assert doc["errno"] == "EACCES", doc
    # the broker never saw a connection from that uid
    assert _refused_audit_lines(b.log_text(), second_user.uid) == []


def test_a_second_user_cannot_connect_to_0600_socket_even_in_open_dir(second_user: SecondUser,
                                                                        root_broker) -> None:
    b = root_broker()
    os.chmod(os.path.dirname(b.socket_path), 0o755)  # only the socket's own 0600 is left
    rc, doc = second_user.run("refused", b.socket_path)
    assert rc == EXIT_CONNECT_FAILED and doc["errno"] == "EACCES", doc


# --------------------------------------------------------------------------- (b)
def _open_up(socket_path: str) -> None:
    os.chmod(os.path.dirname(socket_path), 0o755)
    os.chmod(socket_path, 0o666)


def test_b_opened_socket_second_user_gets_one_refusal_line(second_user: SecondUser, root_broker) -> None:
    b = root_broker()
    _open_up(b.socket_path)
    rc, doc = second_user.run("refused", b.socket_path)
    assert rc == EXIT_READ
    _assert_refusal_only(doc)
    events = _refused_audit_lines(b.log_text(), second_user.uid)
    assert [e["event"] for e in events] == ["peer_refused"], events
    assert events[0]["reason"] == "peer_uid_not_allowed" and events[0]["pid"] == doc["pid"]
    assert b.proc.poll() is None
    with Client(b.socket_path) as c:  # root is still served
        assert c.ping() == "pong"


def test_b_a_valid_root_token_does_not_help_the_second_user(second_user: SecondUser, root_broker) -> None:
    b = root_broker()
    with Client(b.socket_path) as c:
        token = c.get_token("rootagent").token
    _open_up(b.socket_path)
    token_file = second_user.workdir / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.chown(token_file, second_user.uid, second_user.gid)

    rc, doc = second_user.run("refused", b.socket_path, str(token_file))
    assert rc == EXIT_READ
    _assert_refusal_only(doc)  # no authenticate result, no whoami result
    assert doc["sent"] == ["authenticate", "whoami"] or doc["send_error"], doc

    log = b.log_text()
    events = _refused_audit_lines(log, second_user.uid)
    assert [e["event"] for e in events] == ["peer_refused"], events  # never authenticated
    assert events[0]["uid"] == second_user.uid
    assert token not in log

    # control: the same script and token, run as root, is admitted and authenticated, so the
    # refusal above is the uid gate at work and not a broken script or a dead token
    rc, ctl = second_user.run("refused", b.socket_path, str(token_file), as_root=True)
    assert rc == EXIT_READ and ctl["closed"] == "eof" and len(ctl["lines"]) == 2, ctl
    replies = [json.loads(line) for line in ctl["lines"]]
    assert replies[0]["result"]["instance_id"] == "rootagent"
    assert replies[1]["result"]["uid"] == 0 and replies[1]["result"]["pid"] == ctl["pid"]
    assert token not in b.log_text()


# --------------------------------------------------------------------------- (c)
def test_c_spoofed_from_is_ignored(second_user: SecondUser, root_broker) -> None:
    b = root_broker()
    with Client(b.socket_path) as victim:
        victim.get_token("victim")
        rc, doc = second_user.run("spoof", b.socket_path, as_root=True)
        assert rc == EXIT_READ and doc["stage"] == "spoof", doc
        assert "error" not in doc["get_token"], doc
        send = doc["send"]
        assert "error" not in send, send
        assert send["result"]["to"] == "victim" and send["result"]["status"] == "queued"
        msgs = victim.receive(wait_s=5)
    assert [(m.from_, m.to, m.content) for m in msgs] == [("mallory", "victim", "x")]
    assert msgs[0].id == send["result"]["id"]
