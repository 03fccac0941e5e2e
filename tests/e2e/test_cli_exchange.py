"""End to end: ``parrot-ipc serve`` as a subprocess, and CLI agents (separate session files) talking."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from parrot_ipc import Client

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_SESSION = 0, 1, 2, 3, 4


@dataclass
class Agent:
    """One CLI agent: a session file and the broker socket it uses."""

    name: str
    socket_path: str
    session: Path
    run: Callable[..., object]

    def __call__(self, *args: str, **kw: object):  # -> CliResult
        return self.run(self.socket_path, self.session, *args, **kw)

    def ok(self, *args: str, **kw: object):  # -> CliResult
        res = self(*args, **kw)
        assert res.returncode == EXIT_OK, f"{args}: rc={res.returncode}\n{res.stdout}\n{res.stderr}"
        return res

    def json(self, *args: str) -> dict:
        return json.loads(self.ok(*args, "--json").stdout)


@pytest.fixture
def agents(broker, cli, tmp_path: Path) -> Callable[..., list[Agent]]:
    """``agents("alice", "bob")``: a fresh broker and one registered CLI agent per name."""

    def make(*names: str) -> list[Agent]:
        b = broker()
        out = []
        for name in names:
            a = Agent(name, b.socket_path, tmp_path / f"{name}.session", cli)
            res = a.ok("register", name)
            assert f"registered as {name}" in res.stdout
            out.append(a)
        return out

    return make


def test_register_send_recv_then_ack(agents) -> None:
    alice, bob = agents("alice", "bob")
    sent = alice.ok("send", "bob", "hello bob, it's alice")
    assert sent.stdout.startswith("sent ") and "to bob (queued)" in sent.stdout

    got = bob.ok("recv")
    lines = got.stdout.splitlines()
    assert len(lines) == 1, got.stdout
    assert lines[0].endswith("alice -> bob: hello bob, it's alice")

    # recv acked it: the next recv finds nothing (not even a redelivery after the lease)
    again = bob.ok("recv")
    assert again.stdout == ""
    assert "(no messages)" in again.stderr
    assert bob.json("recv") == {"messages": [], "acked": 0}


def test_recv_json_and_stdin_message(agents) -> None:
    alice, bob = agents("alice", "bob")
    alice.ok("send", "bob", "-", input="line one\nline two")
    alice.ok("send", "bob", "second", "--data", '{"k": [1, 2]}')
    doc = bob.json("recv")
    assert doc["acked"] == 2
    msgs = doc["messages"]
    assert [m["from"] for m in msgs] == ["alice", "alice"]
    assert [m["to"] for m in msgs] == ["bob", "bob"]
    assert msgs[0]["content"] == "line one\nline two"
    assert msgs[1]["content"] == "second" and msgs[1]["data"] == {"k": [1, 2]}
    assert msgs[0]["id"] < msgs[1]["id"]  # sortable by arrival
    assert bob.json("recv")["messages"] == []


def test_list_table_and_json(agents) -> None:
    alice, _ = agents("alice", "bob")
    alice.ok("send", "bob", "one")
    alice.ok("send", "bob", "two")

    table = alice.ok("list").stdout.splitlines()
    assert table[0].split() == ["INSTANCE", "ONLINE", "LAST", "SEEN", "QUEUED"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert set(rows) == {"alice", "bob"}
    assert rows["alice"][1] == "yes"  # the connection running `list` is alice's
    assert rows["bob"][1] == "no"  # bob's CLI process has exited
    assert rows["bob"][-1] == "2" and rows["alice"][-1] == "0"

    doc = alice.json("list")
    by_id = {i["instance_id"]: i for i in doc["instances"]}
    assert set(by_id) == {"alice", "bob"}
    assert by_id["bob"] == {**by_id["bob"], "online": False, "queued": 2}
    assert by_id["alice"]["online"] is True and by_id["alice"]["queued"] == 0
    assert all(i["last_seen"].endswith("Z") for i in doc["instances"])


def test_whoami_json_shows_the_cli_process(agents) -> None:
    (alice,) = agents("alice")
    res = alice.ok("whoami", "--json")
    me = json.loads(res.stdout)
    assert me["instance_id"] == "alice"
    assert me["uid"] == os.getuid() and me["gid"] == os.getgid()
    assert me["pid"] == res.pid  # SO_PEERCRED saw the CLI process itself
    assert set(me["scopes"]) >= {"send", "receive", "list", "broadcast", "rename"}
    human = alice.ok("whoami").stdout
    assert human.startswith("alice ") and f"uid={os.getuid()}" in human


def test_broadcast_reaches_everyone_else(agents) -> None:
    alice, bob, carol = agents("alice", "bob", "carol")
    res = alice.json("broadcast", "all hands")
    assert sorted(res["recipients"]) == ["bob", "carol"]
    for agent in (bob, carol):
        msgs = agent.json("recv")["messages"]
        assert [(m["from"], m["to"], m["content"]) for m in msgs] == [("alice", agent.name, "all hands")]
    assert alice.json("recv")["messages"] == []  # not sent to the sender
    human = bob.ok("broadcast", "pong all")
    assert "to 2 recipient(s): alice, carol" in human.stdout


def test_rename_forwards_and_is_rate_limited(agents) -> None:
    alice, bob = agents("alice", "bob")
    res = bob.ok("rename", "bob2")
    assert "renamed bob -> bob2" in res.stdout
    assert json.loads(bob.session.read_text())["instance_id"] == "bob2"
    assert bob.json("whoami")["instance_id"] == "bob2"

    sent = alice.json("send", "bob", "to the old name")
    assert sent["status"] == "forwarded" and sent["to"] == "bob2"
    msgs = bob.json("recv")["messages"]
    assert [(m["from"], m["to"], m["content"]) for m in msgs] == [("alice", "bob2", "to the old name")]

    second = bob("rename", "bob3")
    assert second.returncode == EXIT_REFUSED
    assert "One rename per" in second.stderr and "rename_rate_limited" in second.stderr
    err = json.loads(bob("rename", "bob3", "--json").stdout)["error"]
    assert err["code"] == -32003 and err["reason"] == "rename_rate_limited"
    assert err["data"]["retry_after_s"] > 0
    assert bob.json("whoami")["instance_id"] == "bob2"


def test_logout_revokes_and_removes_the_session(agents) -> None:
    (alice,) = agents("alice")
    saved = alice.session.read_bytes()
    res = alice.ok("logout")
    assert "session revoked" in res.stdout
    assert not alice.session.exists()

    gone = alice("whoami")
    assert gone.returncode == EXIT_SESSION
    assert "register" in gone.stderr

    # the token itself is dead at the broker, not only the file
    alice.session.write_bytes(saved)
    alice.session.chmod(0o600)
    dead = alice("whoami", "--json")
    assert dead.returncode == EXIT_REFUSED
    assert json.loads(dead.stdout)["error"]["code"] == -32001


def test_json_error_for_a_refused_request(agents) -> None:
    (alice,) = agents("alice")
    long_key = "k" * 200  # over the protocol's 128: the broker refuses it
    res = alice("send", "bob", "x", "--idempotency-key", long_key, "--json")
    assert res.returncode == EXIT_REFUSED
    err = json.loads(res.stdout)["error"]
    assert err["code"] == -32602 and err["reason"] == "invalid_params"
    assert res.stderr == ""
    human = alice("send", "bob", "x", "--idempotency-key", long_key)
    assert human.returncode == EXIT_REFUSED
    assert human.stdout == "" and human.stderr.startswith("error: ") and "-32602" in human.stderr


def test_a_bad_recipient_name_is_a_usage_error_in_words(agents) -> None:
    """Issue 16: the CLI explains the instance id rule itself (exit 2), never the raw regex."""
    (alice,) = agents("alice")
    res = alice("send", "../../etc/passwd", "x", "--json")
    assert res.returncode == 2 and res.stderr == ""
    err = json.loads(res.stdout)["error"]
    assert err["reason"] == "bad_instance_id" and "'/' at position 3 is not allowed" in err["message"]
    human = alice("send", "../../etc/passwd", "x")
    assert human.returncode == 2 and "regex" not in human.stderr
    assert "1-64 characters from A-Z a-z 0-9 _ . -" in human.stderr


def test_token_is_never_printed(agents) -> None:
    (alice,) = agents("alice")
    token = json.loads(alice.session.read_text())["session_token"]
    assert len(token) >= 40
    res = alice.ok("register", "alice", "--json")
    new_token = json.loads(alice.session.read_text())["session_token"]
    assert new_token != token
    assert new_token not in res.stdout + res.stderr
    assert "token" not in json.loads(res.stdout)


def test_unreachable_broker_exits_3_with_path_and_hint(cli, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "mcp.sock")
    for args in (("ping",), ("register", "alice")):
        res = cli(missing, tmp_path / "s", *args)
        assert res.returncode == EXIT_UNREACHABLE, res
        assert missing in res.stderr
        assert f"parrot-ipc serve --socket {missing}" in res.stderr
    doc = json.loads(cli(missing, tmp_path / "s", "ping", "--json").stdout)
    assert doc["error"]["socket"] == missing and doc["error"]["reason"] == "broker_unavailable"

    # a stale socket file (nobody listening: connection refused) is unreachable too
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    res = cli(stale, tmp_path / "s", "ping")
    assert res.returncode == EXIT_UNREACHABLE and stale in res.stderr and "parrot-ipc serve" in res.stderr


@pytest.mark.parametrize("args", [("bogus",), ("send", "bob"), ("recv", "--max", "0"),
                                  ("send", "bob", "x", "--data", "[1]")])
def test_usage_errors_exit_2(cli, tmp_path: Path, args: tuple[str, ...]) -> None:
    res = cli(str(tmp_path / "none.sock"), tmp_path / "s", *args)
    assert res.returncode == EXIT_USAGE, res


def test_session_file_is_0600_and_refused_when_open(agents, cli, tmp_path: Path) -> None:
    (alice,) = agents("alice")
    st = alice.session.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()

    # even under a wide-open umask, register writes it 0600
    loose = Agent("loose", alice.socket_path, tmp_path / "loose.session", cli)
    loose.ok("register", "loose", umask=0)
    assert stat.S_IMODE(loose.session.stat().st_mode) == 0o600

    alice.session.chmod(0o644)
    res = alice("whoami")
    assert res.returncode == EXIT_SESSION
    assert "0644" in res.stderr and "chmod 600" in res.stderr
    doc = json.loads(alice("whoami", "--json").stdout)
    assert doc["error"]["reason"] == "session_file"

    alice.session.chmod(0o600)
    alice.ok("whoami")

    # a symlink to a good session file is refused too
    link = tmp_path / "link.session"
    link.symlink_to(alice.session)
    via_link = Agent("alice", alice.socket_path, link, cli)
    assert via_link("whoami").returncode == EXIT_SESSION


@pytest.mark.root
def test_session_file_owned_by_another_uid_is_refused(agents) -> None:
    (alice,) = agents("alice")
    os.chown(alice.session, 65534, -1)
    res = alice("whoami")
    assert res.returncode == EXIT_SESSION
    assert "owned by uid 65534" in res.stderr
    os.chown(alice.session, os.geteuid(), -1)
    alice.ok("whoami")


def test_each_test_gets_its_own_broker(agents) -> None:
    """Sanity for the fixtures: each test's broker is its own (no leaked mail or names)."""
    (alice,) = agents("alice")
    with Client(alice.socket_path) as c:
        c.get_token("probe")
        names = {i.instance_id for i in c.list_instances()}
    assert names == {"alice", "probe"}


def test_send_reply_to_is_shown_by_recv(agents) -> None:
    """Issue 15: ``send --reply-to ID``; ``recv`` shows it (text and ``--json``)."""
    alice, bob = agents("alice", "bob")
    first = json.loads(alice.ok("send", "bob", "question?", "--json").stdout)["id"]
    bob.ok("send", "alice", "answer", "--reply-to", first)
    bob.ok("send", "alice", "answer again", "--reply-to", first)
    line = alice.ok("recv", "--max", "1").stdout.strip()
    assert line.endswith(f"bob -> alice: answer  reply_to={first}")
    doc = json.loads(alice.ok("recv", "--json").stdout)
    assert [(m["content"], m["reply_to"]) for m in doc["messages"]] == [("answer again", first)]
