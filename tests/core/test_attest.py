"""Issue 13, finding 3, in the core: a process that exec(2)s another program loses its session.

The probe is a :class:`core_harness.FakeProcess` standing in for the OS layer's pinned pidfd;
the test "execs" by changing what it reports. Before issue 13 the executable was read only at
accept, so every request below that is refused was answered.
"""

from __future__ import annotations

import pytest
from core_harness import BROKER_UID, FakeProcess, Harness, Peer

from parrot_ipc.core import Connection, PeerCredentials, PeerRule, RulePolicy

PY = "/usr/bin/python3.11"
SOCAT = "/usr/bin/socat"
PY_ONLY = PeerRule("python-only", uids=frozenset({BROKER_UID}), executables=("/usr/bin/python3*",))


def _peer(h: Harness, probe: FakeProcess | None, pid: int = 10) -> Peer:
    cred = PeerCredentials(pid=pid, uid=BROKER_UID, gid=BROKER_UID, exe=PY, start_time=111, process=probe)
    conn = h.broker.accept(cred)
    assert isinstance(conn, Connection), conn
    return Peer(h, conn)


def _reason(error: dict) -> tuple[int, str]:
    return error["code"], error["data"]["reason"]


def test_exec_after_get_token_ends_the_session_at_the_next_request(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PY_ONLY]))
    probe = FakeProcess(PY)
    py = _peer(h, probe)
    token = py.ok("get_token", {"instance_id": "py"})["token"]
    assert py.ok("send", {"to": "py", "content": "from python"})["status"] == "queued"
    probe.now = SOCAT  # python3 execv()s socat on the same connection
    assert _reason(py.err("send", {"to": "py", "content": "from socat"})) == (-32001, "peer_exe_changed")
    assert _reason(py.err("whoami")) == (-32001, "peer_exe_changed")  # and every request after
    (ev,) = h.audit.named("peer_exe_changed")[:1]
    assert (ev["exe_was"], ev["exe_now"], ev["instance"], ev["pid"]) == (PY, SOCAT, "py", 10)
    assert [e["why"] for e in h.audit.named("session_ended")] == ["peer_exe_changed"]
    # the token is dead for everyone: a fresh python3 connection cannot revive it
    again = _peer(h, FakeProcess(PY), pid=11)
    assert _reason(again.err("authenticate", {"token": token})) == (-32001, "token_invalid")
    again.ok("get_token", {"instance_id": "py"})
    assert [m["content"] for m in again.receive()] == ["from python"]  # socat's send never queued


def test_exec_before_get_token_gets_no_token(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PY_ONLY]))
    probe = FakeProcess(PY)
    py = _peer(h, probe)
    probe.now = SOCAT
    assert _reason(py.err("get_token", {"instance_id": "sc"})) == (-32001, "peer_exe_changed")
    assert not h.audit.named("token_issued")
    assert h.audit.named("peer_exe_changed")[0]["instance"] is None


def test_exec_before_authenticate_is_refused(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PY_ONLY]))
    token = _peer(h, FakeProcess(PY)).ok("get_token", {"instance_id": "py"})["token"]
    probe = FakeProcess(PY)
    other = _peer(h, probe, pid=12)
    probe.now = SOCAT
    assert _reason(other.err("authenticate", {"token": token})) == (-32001, "peer_exe_changed")
    assert not h.audit.named("authenticated")


@pytest.mark.parametrize("probe", [FakeProcess(None), None], ids=["unreadable", "no_probe"])
def test_an_executable_that_cannot_be_read_again_fails_closed(make_harness: type[Harness],
                                                              probe: FakeProcess | None) -> None:
    h = make_harness(policy=RulePolicy([PY_ONLY]))
    py = _peer(h, probe)
    assert _reason(py.err("get_token", {"instance_id": "py"})) == (-32001, "peer_attestation_failed")
    assert h.audit.named("peer_exe_changed")[0]["exe_now"] is None


def test_a_process_bound_session_is_checked_before_each_request(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("pinned", uids=frozenset({BROKER_UID}), bind="process")]))
    probe = FakeProcess(PY)
    py = _peer(h, probe)
    py.ok("get_token", {"instance_id": "pinned"})
    before = probe.calls
    py.ok("whoami")
    py.ok("ping")
    assert probe.calls == before + 2  # one re-check per request
    probe.now = "/usr/bin/perl"
    assert _reason(py.err("whoami")) == (-32001, "peer_exe_changed")


def test_a_rule_that_pins_nothing_never_asks_the_probe(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("uid-only", uids=frozenset({BROKER_UID}))]))
    probe = FakeProcess(PY)
    py = _peer(h, probe)
    py.ok("get_token", {"instance_id": "free"})
    probe.now = SOCAT  # an exec does not matter where the rule never looked at the program
    py.ok("send", {"to": "free", "content": "x"})
    assert probe.calls == 0 and not h.audit.named("peer_exe_changed")
