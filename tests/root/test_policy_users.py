"""Root only: the config policy against real second and third Unix users (issue: peer policy).

The tests make a group and two system users: ``u2`` is in the group, ``u3`` is not. Their
client is a standard-library script run with /usr/bin/python3 through runuser, so the kernel's
SO_PEERCRED, SO_PEERGROUPS and /proc/<pid>/exe describe that user and that program. Every broker
here writes ``--audit-log``, and each test checks its events there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from parrot_ipc import Client, ParrotError

pytestmark = pytest.mark.root

SYSTEM_PYTHON = "/usr/bin/python3"
TIMEOUT_S = 30.0

RPC_SCRIPT = r'''
"""Run JSON-RPC steps on one connection; print one JSON document. Standard library only.

usage: rpc.py SOCKET STEPS [--token-in FILE] [--token-out FILE] [--exit-now 1]
STEPS is a JSON list of [method, params]; the string "$TOKEN" in params is replaced by the
token read from --token-in. Tokens in results are written to --token-out and never printed.
"""
import errno, json, os, socket, sys

def main():
    path, steps = sys.argv[1], json.loads(sys.argv[2])
    opts = dict(zip(sys.argv[3::2], sys.argv[4::2]))
    token = open(opts["--token-in"]).read().strip() if "--token-in" in opts else None
    me = {"uid": os.getuid(), "pid": os.getpid()}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
    except OSError as exc:
        print(json.dumps({"connect": errno.errorcode.get(exc.errno, str(exc.errno)), **me}))
        return 3
    if opts.get("--exit-now"):
        os._exit(0)  # leave before the broker can look at us
    responses, buf, closed = [], b"", None
    for i, (method, params) in enumerate(steps, 1):
        req = {"jsonrpc": "2.0", "id": i, "method": method}
        if params is not None:
            req["params"] = json.loads(json.dumps(params).replace('"$TOKEN"', json.dumps(token)))
        try:
            s.sendall((json.dumps(req) + "\n").encode())
        except OSError as exc:
            closed = "send:" + errno.errorcode.get(exc.errno, "?")
        while b"\n" not in buf:
            try:
                chunk = s.recv(65536)
            except OSError as exc:
                chunk, closed = b"", "recv:" + errno.errorcode.get(exc.errno, "?")
            if not chunk:
                closed = closed or "eof"
                break
            buf += chunk
        if b"\n" not in buf:
            break
        line, _, buf = buf.partition(b"\n")
        resp = json.loads(line)
        res = resp.get("result")
        if isinstance(res, dict) and "token" in res:
            if "--token-out" in opts:
                fd = os.open(opts["--token-out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(fd, res["token"].encode())
                os.close(fd)
            res["token"] = "<redacted>"
        responses.append(resp)
        if resp.get("id") is None:
            break  # a refusal: the broker closes after it
    print(json.dumps({"connect": "ok", "responses": responses, "closed": closed, **me}))
    return 0

sys.exit(main())
'''


@dataclass
class User:
    name: str
    uid: int
    gid: int


@dataclass
class People:
    group: str
    gid: int
    u2: User  # in the group
    u3: User  # in no group of ours
    workdir: Path
    script: Path

    def rpc(self, user: User, sock: str, steps: list[Any], *opts: str) -> dict[str, Any]:
        """Run the stdlib client as ``user``; returns its JSON (with ``rc``)."""
        cmd = ["runuser", "-u", user.name, "--", SYSTEM_PYTHON, str(self.script), sock, json.dumps(steps), *opts]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=self.workdir)
        assert res.returncode in (0, 3), f"rc={res.returncode}\n{res.stdout}\n{res.stderr}"
        if not res.stdout.strip():
            return {"rc": res.returncode}
        doc: dict[str, Any] = json.loads(res.stdout)
        assert doc["uid"] == user.uid, doc  # it really ran as that user
        doc["rc"] = res.returncode
        return doc

    def token_file(self, user: User, name: str) -> Path:
        """An empty 0600 file owned by ``user`` in the shared work dir, for a token."""
        path = self.workdir / f"{name}.token"
        path.write_text("")
        os.chown(path, user.uid, user.gid)
        path.chmod(0o600)
        return path


@pytest.fixture(scope="module")
def people(accounts) -> Iterator[People]:
    with (accounts.open_dir("pipc-pol-") as workdir, accounts.group("ptg") as group,
          accounts.user("pt2", groups=[group.gr_name]) as p2, accounts.user("pt3") as p3):
        script = workdir / "rpc.py"
        script.write_text(RPC_SCRIPT)
        script.chmod(0o755)
        yield People(group.gr_name, group.gr_gid, User(p2.pw_name, p2.pw_uid, p2.pw_gid),
                     User(p3.pw_name, p3.pw_uid, p3.pw_gid), workdir, script)


@dataclass
class PolicyBroker:
    proc: Any
    socket: str
    config: Path
    audit: Path

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.audit.read_text().splitlines():
            ev = json.loads(line)
            if event is None or ev["event"] == event:
                out.append(ev)
        return out

    def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for ev in self.events():
                if pred(ev):
                    return ev
            time.sleep(0.05)
        raise AssertionError(f"no such audit event; log:\n{self.audit.read_text()}")

    def open_up(self) -> None:
        """Deliberately open the directory and socket to everyone, so the policy is what refuses."""
        os.chmod(os.path.dirname(self.socket), 0o755)
        os.chmod(self.socket, 0o666)


@pytest.fixture
def policy_broker(broker) -> Iterator[Callable[[str], PolicyBroker]]:
    parents: list[Path] = []

    def start(toml: str) -> PolicyBroker:
        parent = Path(tempfile.mkdtemp(prefix="pipc-pb-"))
        parent.chmod(0o755)
        parents.append(parent)
        cfg = parent / "config.toml"
        cfg.write_text(toml)
        cfg.chmod(0o644)
        audit = parent / "audit.jsonl"
        sock = str(parent / "run" / "mcp.sock")
        b = broker(sock, "--config", str(cfg), "--audit-log", str(audit))
        return PolicyBroker(b.proc, sock, cfg, audit)

    yield start
    for p in parents:
        shutil.rmtree(p, ignore_errors=True)


def _error(resp: dict[str, Any]) -> tuple[int, str]:
    return resp["error"]["code"], resp["error"]["data"]["reason"]


ROOT_RULE = """
[[peers]]
name = "ops"
uids = [0]
scopes = ["send", "receive", "list", "admin"]
"""


def policy_toml(server: dict[str, Any], *peers: dict[str, Any]) -> str:
    """The text of a policy file: a ``[server]`` table with ``server``'s keys, one ``[[peers]]``
    table per entry of ``peers``, then ROOT_RULE (root may always connect). Values are strings,
    integers or lists of them, written as JSON, which for these is also TOML (TOML 1.0, "String",
    "Integer", "Array")."""
    tables = [("[server]", server), *(("[[peers]]", peer) for peer in peers)]
    text = "\n\n".join("\n".join([head, *(f"{k} = {json.dumps(v)}" for k, v in keys.items())])
                       for head, keys in tables)
    return f"\n{text}\n{ROOT_RULE}"


# --------------------------------------------------------------------------- groups
def test_group_member_admitted_through_socket_group_messages_the_broker_user(people: People, policy_broker) -> None:
    b = policy_broker(policy_toml({"socket_group": people.group},
                                  {"name": "agents", "groups": [people.group], "scopes": ["send", "receive", "list"]}))
    d, s = os.stat(os.path.dirname(b.socket)), os.stat(b.socket)
    assert (stat.S_IMODE(d.st_mode), d.st_gid) == (0o750, people.gid)
    assert (stat.S_IMODE(s.st_mode), s.st_gid) == (0o660, people.gid)
    with Client(b.socket) as boss:
        boss.get_token("boss")
        doc = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "worker"}],
                                               ["send", {"to": "boss", "content": "hello from worker"}]])
        assert doc["connect"] == "ok"
        assert doc["responses"][0]["result"]["scopes"] == ["list", "receive", "send"]
        assert doc["responses"][1]["result"]["status"] == "queued"
        msgs = boss.receive()
    assert [(m.from_, m.content) for m in msgs] == [("worker", "hello from worker")]
    admitted = b.wait_event(lambda e: e["event"] == "peer_admitted" and e["uid"] == people.u2.uid)
    assert admitted["rule"] == "agents"
    # The third user is in no rule and not in the group: the 0660 socket stops it at connect(2).
    assert people.rpc(people.u3, b.socket, [["ping", None]])["connect"] == "EACCES"


def test_user_in_no_rule_is_refused_at_accept_and_never_gets_a_token(people: People, policy_broker) -> None:
    b = policy_broker(f"""
[[peers]]
name = "agents"
groups = ["{people.group}"]
{ROOT_RULE}""")
    b.open_up()
    doc = people.rpc(people.u3, b.socket, [["get_token", {"instance_id": "intruder"}]])
    (resp,) = doc["responses"]
    assert resp["id"] is None and _error(resp) == (-32002, "peer_not_allowed")
    refused = b.wait_event(lambda e: e["event"] == "peer_refused" and e["uid"] == people.u3.uid)
    assert refused["rule"] == "no_rule" and refused["exe"].startswith("/usr/bin/python3")
    assert not [e for e in b.events("token_issued") if e["uid"] == people.u3.uid]


def test_token_of_one_admitted_user_presented_by_another_gets_32001(people: People, policy_broker) -> None:
    b = policy_broker(f"""
[[peers]]
groups = ["{people.group}"]

[[peers]]
uids = [{people.u3.uid}]
{ROOT_RULE}""")
    b.open_up()
    f2 = people.token_file(people.u2, "u2")
    doc = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "w2"}]], "--token-out", str(f2))
    assert "result" in doc["responses"][0]
    f3 = people.token_file(people.u3, "stolen")
    f3.write_text(f2.read_text())  # u3 somehow holds u2's token
    doc = people.rpc(people.u3, b.socket, [["authenticate", {"token": "$TOKEN"}], ["whoami", None]],
                     "--token-in", str(f3))
    assert _error(doc["responses"][0]) == (-32001, "token_uid_mismatch")
    assert _error(doc["responses"][1]) == (-32001, "no_session")
    ev = b.wait_event(lambda e: e["event"] == "token_uid_mismatch")
    assert ev["uid"] == people.u3.uid and ev["token_uid"] == people.u2.uid


# --------------------------------------------------------------------------- executables
EXE_RULES = """
[[peers]]
name = "python-only"
uids = [{uid}]
executables = ["/usr/bin/python3*"]
""" + ROOT_RULE


def test_executables_rule_admits_python_and_refuses_socat(people: People, policy_broker) -> None:
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is not installed (.ci/run installs it)")
    b = policy_broker(EXE_RULES.format(uid=people.u2.uid))
    b.open_up()
    doc = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "py"}]])
    assert doc["responses"][0]["result"]["instance_id"] == "py"
    res = subprocess.run(["runuser", "-u", people.u2.name, "--", socat, "-t", "2", "-", f"UNIX-CONNECT:{b.socket}"],
                         input='{"jsonrpc":"2.0","id":1,"method":"get_token","params":{"instance_id":"sc"}}\n',
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    (line,) = res.stdout.splitlines()
    assert _error(json.loads(line)) == (-32002, "peer_not_allowed")
    admitted = b.wait_event(lambda e: e["event"] == "peer_admitted" and e["uid"] == people.u2.uid)
    refused = b.wait_event(lambda e: e["event"] == "peer_refused" and e["uid"] == people.u2.uid)
    assert admitted["exe"].startswith("/usr/bin/python3") and admitted["rule"] == "python-only"
    assert refused["exe"] == os.path.realpath(socat)


def test_peer_that_exits_between_connect_and_attestation_is_refused(people: People, policy_broker) -> None:
    b = policy_broker(EXE_RULES.format(uid=people.u2.uid))
    b.open_up()
    os.kill(b.proc.pid, signal.SIGSTOP)  # the broker cannot accept until the client is gone
    try:
        doc = people.rpc(people.u2, b.socket, [], "--exit-now", "1")
        assert doc["rc"] == 0
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    ev = b.wait_event(lambda e: e["event"] == "peer_refused" and e["uid"] == people.u2.uid)
    assert ev["reason"] == "peer_attestation_failed" and ev["exe"] is None and ev["attest_error"]
    assert not b.events("token_issued")


# --------------------------------------------------------------------------- bind = "process"
def test_process_bound_token_fails_from_a_second_process(people: People, policy_broker) -> None:
    b = policy_broker(f"""
[[peers]]
uids = [{people.u2.uid}]
bind = "process"
{ROOT_RULE}""")
    b.open_up()
    tok = people.token_file(people.u2, "pinned")
    first = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "pinned"}], ["whoami", None]],
                       "--token-out", str(tok))
    assert first["responses"][1]["result"]["pid"] == first["pid"]
    second = people.rpc(people.u2, b.socket, [["authenticate", {"token": "$TOKEN"}]], "--token-in", str(tok))
    assert _error(second["responses"][0]) == (-32001, "token_process_mismatch")
    ev = b.wait_event(lambda e: e["event"] == "token_process_mismatch")
    assert ev["pid"] == second["pid"] and ev["token_pid"] == first["pid"]
    with Client(b.socket) as admin:
        admin.get_token("ops")
        (row,) = [r for r in admin.call("list_sessions")["sessions"] if r["instance_id"] == "pinned"]
        assert row["bind"] == "process" and row["uid"] == people.u2.uid


# --------------------------------------------------------------------------- shared secret
def test_wrong_shared_secret_proof_is_refused_and_rate_limited(policy_broker, tmp_path: Path) -> None:
    secret_dir = Path(tempfile.mkdtemp(prefix="pipc-sec-"))
    try:
        secret = secret_dir / "secret"
        secret.write_text("correct horse battery staple\n")
        secret.chmod(0o600)
        b = policy_broker(f'[server]\nshared_secret_file = "{secret}"\nmax_secret_failures = 3\n')

        def proof(name: str) -> str:
            return hmac.new(b"correct horse battery staple", name.encode(), hashlib.sha256).hexdigest()

        with Client(b.socket) as c:
            assert c.get_token("good", shared_secret_proof=proof("good")).instance_id == "good"
            for _ in range(3):
                with pytest.raises(ParrotError) as info:
                    c.get_token("bad", shared_secret_proof="00" * 32)
                assert (info.value.code, info.value.reason) == (-32002, "bad_shared_secret_proof")
            with pytest.raises(ParrotError) as info:
                c.get_token("good", shared_secret_proof=proof("good"))
            assert (info.value.code, info.value.reason) == (-32003, "secret_rate_limited")
            assert info.value.data["retry_after_s"] >= 1
        assert len([e for e in b.events("token_refused") if e["reason"] == "bad_shared_secret_proof"]) == 3
        assert b.wait_event(lambda e: e["event"] == "rate_limited")["method"] == "get_token"
        assert "correct horse" not in b.audit.read_text()
    finally:
        shutil.rmtree(secret_dir, ignore_errors=True)


def test_broker_refuses_a_shared_secret_file_others_can_read(serve_once, tmp_path: Path) -> None:
    d = Path(tempfile.mkdtemp(prefix="pipc-sec2-"))
    try:
        (d / "secret").write_text("s")
        (d / "secret").chmod(0o644)
        (d / "c.toml").write_text(f'[server]\nshared_secret_file = "{d / "secret"}"\n')
        res = subprocess.run([*_serve(str(d / "run" / "mcp.sock")), "--config", str(d / "c.toml")],
                             capture_output=True, text=True, timeout=TIMEOUT_S)
        assert res.returncode != 0 and "0644" in res.stderr and str(d / "secret") in res.stderr
        assert not (d / "run").exists()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _serve(sock: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "parrot_ipc", "serve", "--socket", sock]


# --------------------------------------------------------------------------- SIGHUP
def test_sighup_that_removes_a_scope_takes_effect_on_a_live_session(policy_broker) -> None:
    b = policy_broker('[[peers]]\nname = "r1"\nuids = [0]\nscopes = ["send", "receive", "list"]\n')
    with Client(b.socket) as c:
        c.get_token("live")
        assert c.send("live", "before").status == "queued"
        b.config.write_text('[[peers]]\nname = "r2"\nuids = [0]\nscopes = ["receive", "list"]\n')
        os.kill(b.proc.pid, signal.SIGHUP)
        b.wait_event(lambda e: e["event"] == "config_reloaded")
        with pytest.raises(ParrotError) as info:
            c.send("live", "after")  # same connection, same session: the scope is gone at once
        assert (info.value.code, info.value.reason) == (-32002, "scope_missing")
        assert [m.content for m in c.receive()] == ["before"]  # receive is still granted
    assert b.wait_event(lambda e: e["event"] == "scope_denied")["scope"] == "send"


def test_sighup_that_drops_a_peer_revokes_its_session(policy_broker) -> None:
    b = policy_broker('[[peers]]\nuids = [0]\n')
    with Client(b.socket) as c:
        token = c.get_token("gone").token
        b.config.write_text(f'[[peers]]\nuids = [{os.geteuid() + 4242}]\n')
        os.kill(b.proc.pid, signal.SIGHUP)
        ev = b.wait_event(lambda e: e["event"] == "config_reloaded")
        assert ev["dropped"] == 1
        with pytest.raises(ParrotError):
            c.whoami()  # the connection was closed by the broker
    assert token not in b.audit.read_text()


# --------------------------------------------------------------------------- the audit log
def test_audit_log_is_0600_holds_every_event_and_no_token(people: People, policy_broker) -> None:
    b = policy_broker(f"""
[server]
max_frame_bytes = 1024

[[peers]]
name = "agents"
groups = ["{people.group}"]
scopes = ["receive"]

[[peers]]
uids = [{people.u3.uid}]

[[peers]]
uids = [0]
scopes = ["send", "receive", "rename", "admin"]
""")
    b.open_up()
    assert stat.S_IMODE(os.stat(b.audit).st_mode) == 0o600
    tokens: list[str] = []
    f2 = people.token_file(people.u2, "a2")
    people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "a2"}], ["send", {"to": "x", "content": "y"}]],
               "--token-out", str(f2))
    tokens.append(f2.read_text())
    f3 = people.token_file(people.u3, "a3")
    f3.write_text(tokens[0])
    people.rpc(people.u3, b.socket, [["authenticate", {"token": "$TOKEN"}], ["ping", None],
                                     ["get_token", {"instance_id": "a2"}]],  # held by u2: refused
               "--token-in", str(f3))
    with Client(b.socket) as c:
        tokens.append(c.get_token("ops").token)
        c.rename("ops2")
        with pytest.raises(ParrotError):
            c.rename("ops3")  # rate limited
        c.call("list_sessions")
    import socket as stdsocket

    with stdsocket.socket(stdsocket.AF_UNIX) as raw:
        raw.connect(b.socket)
        raw.sendall(b"x" * 5000)
        raw.settimeout(5)
        assert b"-32004" in raw.recv(4096)
    b.config.write_text(b.config.read_text())
    os.kill(b.proc.pid, signal.SIGHUP)
    b.wait_event(lambda e: e["event"] == "config_reloaded")
    names = {e["event"] for e in b.events()}
    assert {"peer_admitted", "token_issued", "token_refused", "token_uid_mismatch", "scope_denied",
            "rate_limited", "frame_too_large", "config_reloaded", "renamed"} <= names, names
    text = b.audit.read_text()
    assert all(t and t not in text for t in tokens)
    assert all(json.loads(line)["ts"].endswith("Z") for line in text.splitlines())


# --------------------------------------------------------------------------- connection flood
def test_a_connection_flood_past_the_per_uid_cap_is_refused_and_another_uid_still_works(
        people: People, policy_broker) -> None:
    import socket as stdsocket

    b = policy_broker(policy_toml({"max_connections_per_uid": 20}, {"uids": [people.u2.uid]}))
    b.open_up()
    flood = []
    try:
        for _ in range(20):
            s = stdsocket.socket(stdsocket.AF_UNIX)
            s.settimeout(5)
            s.connect(b.socket)
            s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
            assert b"pong" in s.recv(1000)  # admitted
            flood.append(s)
        extra = stdsocket.socket(stdsocket.AF_UNIX)
        extra.settimeout(5)
        extra.connect(b.socket)
        err = json.loads(extra.recv(1000).split(b"\n")[0])["error"]
        extra.close()
        assert err["code"] == -32003 and err["data"]["reason"] == "too_many_connections"
        assert "limit 20" in err["message"]
        # Another UID is not affected by root's flood.
        doc = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "calm"}], ["ping", None]])
        assert doc["responses"][1]["result"] == "pong"
        ev = b.wait_event(lambda e: e["event"] == "peer_refused" and e.get("reason") == "too_many_connections")
        assert ev["uid"] == 0
    finally:
        for s in flood:
            s.close()
