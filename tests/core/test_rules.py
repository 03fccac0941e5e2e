"""Config-file policy in the core: [[peers]] rules, attestation failures, scopes per rule,
may_send_to, bind = "process", the shared secret and its rate limit, the admin methods, and
policy reload (``replace_policy``). Pure core: no sockets, files or real clocks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from core_harness import BROKER_UID, FakeProcess, Harness, Peer, decode

from parrot_ipc.core import (
    Admission,
    BrokerConfig,
    Connection,
    DefaultPolicy,
    Drop,
    PeerCredentials,
    PeerRule,
    RulePolicy,
)
from parrot_ipc.core.policy import DEFAULT_SCOPES

OTHER_UID = 2000
PY = "/usr/bin/python3.11"
SECRET = b"s3cret"


def creds(uid: int = BROKER_UID, gid: int | None = None, *, pid: int = 10, groups: tuple[int, ...] = (),
          exe: str | None = PY, start_time: int | None = 111, attest_error: str | None = None) -> PeerCredentials:
    return PeerCredentials(pid=pid, uid=uid, gid=uid if gid is None else gid, groups=groups, exe=exe,
                           start_time=start_time, attest_error=attest_error,
                           process=None if exe is None else FakeProcess(exe))


def attach(h: Harness, cred: PeerCredentials) -> Peer:
    """Accept a peer with full credentials (the harness's ``connect`` only sets pid/uid/gid)."""
    conn = h.broker.accept(cred)
    assert isinstance(conn, Connection), conn
    return Peer(h, conn)


def take(h: Harness, peer: Peer, instance_id: str) -> Peer:
    result = peer.ok("get_token", {"instance_id": instance_id})
    assert result["instance_id"] == instance_id
    peer.token = result["token"]
    return peer


def proof(instance_id: str, secret: bytes = SECRET) -> str:
    return hmac.new(secret, instance_id.encode(), hashlib.sha256).hexdigest()


def expect(error: dict[str, Any], code: int, reason: str) -> None:
    assert (error["code"], error["data"]["reason"]) == (code, reason), error


# =========================================================================== RulePolicy.admit
def test_first_matching_rule_wins() -> None:
    policy = RulePolicy([
        PeerRule("first", uids=frozenset({BROKER_UID}), scopes=frozenset({"receive"})),
        PeerRule("second", uids=frozenset({BROKER_UID}), scopes=DEFAULT_SCOPES),
    ])
    adm = policy.admit(creds())
    assert adm.allowed and adm.rule == "first"
    assert adm.scopes == frozenset({"receive"})


def test_a_later_rule_matches_when_the_earlier_one_does_not() -> None:
    policy = RulePolicy([
        PeerRule("others", uids=frozenset({OTHER_UID})),
        PeerRule("mine", uids=frozenset({BROKER_UID}), may_send_to=("team-*",), bind="process"),
    ])
    adm = policy.admit(creds())
    assert (adm.allowed, adm.rule, adm.may_send_to, adm.bind) == (True, "mine", ("team-*",), "process")


def test_uid_rule_matches_only_its_uids() -> None:
    policy = RulePolicy([PeerRule("alice", uids=frozenset({1000, 1001}))])
    assert policy.admit(creds(1001)).allowed
    refused = policy.admit(creds(1002, gid=1000))  # the gid is irrelevant to a uid-only rule
    assert refused == Admission(allowed=False, rule="no_rule", reason="peer_not_allowed")
    assert refused.scopes == frozenset()


def test_gid_rule_matches_the_primary_gid() -> None:
    policy = RulePolicy([PeerRule("agents", gids=frozenset({500}))])
    assert policy.admit(creds(3000, gid=500)).rule == "agents"
    assert not policy.admit(creds(3000, gid=501)).allowed


def test_gid_rule_matches_a_supplementary_group() -> None:
    policy = RulePolicy([PeerRule("agents", gids=frozenset({500}))])
    adm = policy.admit(creds(3000, gid=3000, groups=(27, 500)))
    assert adm.allowed and adm.rule == "agents"
    assert not policy.admit(creds(3000, gid=3000, groups=(27, 501))).allowed


def test_uids_and_gids_in_one_rule_must_both_match() -> None:
    policy = RulePolicy([PeerRule("both", uids=frozenset({1000}), gids=frozenset({500}))])
    assert policy.admit(creds(1000, gid=1000, groups=(500,))).allowed
    assert not policy.admit(creds(1000, gid=1000)).allowed  # right uid, not in the group
    assert not policy.admit(creds(1001, gid=500)).allowed  # in the group, wrong uid


def test_no_rule_matches_means_refused() -> None:
    adm = RulePolicy([PeerRule("a", uids=frozenset({1})), PeerRule("b", gids=frozenset({2}))]).admit(
        creds(4242, gid=4242, groups=(3,)))
    assert not adm.allowed
    assert adm.reason == "peer_not_allowed"
    # An empty rule list refuses everyone, root included.
    assert RulePolicy([]).admit(creds(0)).reason == "peer_not_allowed"


@pytest.mark.parametrize("exe", ["/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin/python3.12"])
def test_executables_rule_matches_fnmatch_patterns(exe: str) -> None:
    policy = RulePolicy([PeerRule("py", uids=frozenset({BROKER_UID}),
                                  executables=("/usr/bin/node", "/usr/bin/python3*"))])
    adm = policy.admit(creds(exe=exe))
    assert adm.allowed and adm.rule == "py"


@pytest.mark.parametrize("exe", ["/usr/bin/socat", "/usr/local/bin/python3", "/usr/bin/python",
                                 "/usr/bin/nodejs", "/tmp/usr/bin/python3"])
def test_executable_mismatch_falls_through_to_the_next_rule(exe: str) -> None:
    policy = RulePolicy([
        PeerRule("py", uids=frozenset({BROKER_UID}), executables=("/usr/bin/node", "/usr/bin/python3*"),
                 scopes=DEFAULT_SCOPES),
        PeerRule("fallback", uids=frozenset({BROKER_UID}), scopes=frozenset({"list"})),
    ])
    adm = policy.admit(creds(exe=exe))
    assert adm.allowed and adm.rule == "fallback" and adm.scopes == frozenset({"list"})
    # With no fallback rule, the mismatch is a plain refusal, not an attestation failure.
    assert RulePolicy(policy.rules[:1]).admit(creds(exe=exe)).reason == "peer_not_allowed"


def test_unknown_exe_fails_closed_even_if_a_later_rule_would_admit() -> None:
    policy = RulePolicy([
        PeerRule("py", uids=frozenset({BROKER_UID}), executables=("/usr/bin/python3*",)),
        PeerRule("anyone", uids=frozenset({BROKER_UID})),
    ])
    adm = policy.admit(creds(exe=None, attest_error="the peer exited during attestation"))
    assert not adm.allowed
    assert adm.reason == "peer_attestation_failed"
    assert adm.rule == "py"


def test_unknown_exe_does_not_matter_for_a_rule_whose_identity_does_not_match() -> None:
    policy = RulePolicy([
        PeerRule("py-others", uids=frozenset({OTHER_UID}), executables=("/usr/bin/python3*",)),
        PeerRule("mine", uids=frozenset({BROKER_UID})),
    ])
    assert policy.admit(creds(exe=None)).rule == "mine"


def test_bind_process_rule_without_start_time_fails_closed() -> None:
    policy = RulePolicy([
        PeerRule("pinned", uids=frozenset({BROKER_UID}), bind="process"),
        PeerRule("anyone", uids=frozenset({BROKER_UID})),
    ])
    adm = policy.admit(creds(start_time=None))
    assert not adm.allowed and adm.reason == "peer_attestation_failed"
    assert policy.admit(creds(start_time=5)).rule == "pinned"


# =========================================================================== accept
@pytest.mark.parametrize(
    ("rule", "cred"),
    [
        (PeerRule("py", uids=frozenset({BROKER_UID}), executables=("/usr/bin/python3*",)),
         creds(pid=77, exe=None, start_time=None, attest_error="the peer exited before attestation")),
        (PeerRule("pinned", uids=frozenset({BROKER_UID}), bind="process"),
         creds(pid=77, exe=PY, start_time=None, attest_error="cannot read /proc/77: No such process")),
    ],
    ids=["executables", "bind_process"],
)
def test_accept_refuses_an_unattested_peer_with_a_forbidden_frame(
        make_harness: type[Harness], rule: PeerRule, cred: PeerCredentials) -> None:
    h = make_harness(policy=RulePolicy([rule]))
    out = h.broker.accept(cred)
    assert isinstance(out, bytes)
    resp = decode(out)
    assert resp["id"] is None
    assert resp["error"]["code"] == -32002
    assert resp["error"]["data"]["reason"] == "peer_attestation_failed"
    assert h.broker.connections == 0
    (line,) = h.audit.named("peer_refused")
    assert line["reason"] == "peer_attestation_failed"
    assert line["rule"] == rule.label
    assert line["pid"] == 77
    assert "exe" in line and line["exe"] == cred.exe
    assert line["attest_error"] == cred.attest_error
    assert not h.audit.named("peer_admitted")


def test_accept_audit_names_the_rule_and_exe_of_an_admitted_peer(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("py", uids=frozenset({BROKER_UID}),
                                                 executables=("/usr/bin/python3*",))]))
    attach(h, creds(pid=78))
    (line,) = h.audit.named("peer_admitted")
    assert (line["rule"], line["exe"], line["pid"]) == ("py", PY, 78)
    assert "attest_error" not in line


def test_accept_with_no_matching_rule_says_peer_not_allowed(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("a", uids=frozenset({OTHER_UID}))]))
    resp = decode(h.broker.accept(creds()))  # type: ignore[arg-type]
    assert (resp["error"]["code"], resp["error"]["data"]["reason"]) == (-32002, "peer_not_allowed")


# =========================================================================== scopes per rule
def test_a_rule_without_send_gets_scope_missing_on_send(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([
        PeerRule("reader", uids=frozenset({BROKER_UID}), scopes=frozenset({"receive", "list"})),
        PeerRule("writer", uids=frozenset({OTHER_UID})),
    ]))
    reader = take(h, attach(h, creds()), "reader")
    assert sorted(reader.ok("whoami")["scopes"]) == ["list", "receive"]
    take(h, attach(h, creds(OTHER_UID, pid=11)), "writer")
    err = reader.err("send", {"to": "writer", "content": "hi"})
    expect(err, -32002, "scope_missing")
    assert err["data"]["scope"] == "send"
    for method, params in [("broadcast", {"content": "x"}), ("rename", {"new_id": "r2"})]:
        expect(reader.err(method, params), -32002, "scope_missing")
    # Scopes it has still work.
    assert reader.ok("list_instances")["instances"]
    assert reader.receive() == []
    denied = h.audit.named("scope_denied")
    assert [d["scope"] for d in denied] == ["send", "broadcast", "rename"]
    assert all(d["instance"] == "reader" for d in denied)


# =========================================================================== may_send_to
def _send_policy() -> RulePolicy:
    return RulePolicy([
        PeerRule("limited", uids=frozenset({BROKER_UID}), may_send_to=("team-*", "ops")),
        PeerRule("free", uids=frozenset({OTHER_UID})),
    ])


def test_send_to_a_name_outside_may_send_to_is_refused(make_harness: type[Harness]) -> None:
    h = make_harness(policy=_send_policy())
    sender = take(h, attach(h, creds()), "team-lead")
    outsider = take(h, attach(h, creds(OTHER_UID, pid=11)), "outsider")
    team = take(h, attach(h, creds(OTHER_UID, pid=12)), "team-b")
    ops = take(h, attach(h, creds(OTHER_UID, pid=13)), "ops")

    err = sender.err("send", {"to": "outsider", "content": "psst"})
    expect(err, -32002, "recipient_not_allowed")
    assert err["data"]["to"] == "outsider"
    assert outsider.receive() == []
    # A name that does not exist is refused the same way (no probing of the mailbox namespace).
    expect(sender.err("send", {"to": "nobody", "content": "x"}), -32002, "recipient_not_allowed")
    # "ops" is an exact pattern: it does not match "ops2".
    expect(sender.err("send", {"to": "ops2", "content": "x"}), -32002, "recipient_not_allowed")

    assert sender.ok("send", {"to": "team-b", "content": "hello"})["status"] == "queued"
    assert [m["content"] for m in team.receive()] == ["hello"]
    sender.ok("send", {"to": "ops", "content": "page"})
    assert [m["content"] for m in ops.receive()] == ["page"]
    denied = h.audit.named("send_denied")
    assert [d["to"] for d in denied] == ["outsider", "nobody", "ops2"]
    assert all(d["rule"] == "limited" and "content" not in d for d in denied)
    # The unrestricted rule may send anywhere.
    outsider.ok("send", {"to": "team-lead", "content": "back"})


def test_send_through_a_rename_forward_into_a_disallowed_name_is_refused(make_harness: type[Harness]) -> None:
    h = make_harness(policy=_send_policy())
    sender = take(h, attach(h, creds()), "team-lead")
    mover = take(h, attach(h, creds(OTHER_UID, pid=11)), "team-c")
    sender.ok("send", {"to": "team-c", "content": "before"})
    assert mover.ok("rename", {"new_id": "escaped"})["instance_id"] == "escaped"
    err = sender.err("send", {"to": "team-c", "content": "after"})
    expect(err, -32002, "recipient_not_allowed")
    msgs = mover.receive()
    assert [m["content"] for m in msgs] == ["before"]


def test_send_through_a_rename_forward_into_an_allowed_name_works(make_harness: type[Harness]) -> None:
    h = make_harness(policy=_send_policy())
    sender = take(h, attach(h, creds()), "team-lead")
    mover = take(h, attach(h, creds(OTHER_UID, pid=11)), "team-c")
    mover.ok("rename", {"new_id": "team-d"})
    res = sender.ok("send", {"to": "team-c", "content": "fwd"})
    assert (res["to"], res["status"]) == ("team-d", "forwarded")
    assert [m["content"] for m in mover.receive()] == ["fwd"]


def test_broadcast_reaches_only_allowed_names(make_harness: type[Harness]) -> None:
    h = make_harness(policy=_send_policy())
    sender = take(h, attach(h, creds()), "team-lead")
    peers = {name: take(h, attach(h, creds(OTHER_UID, pid=20 + i)), name)
             for i, name in enumerate(["team-a", "outsider", "ops", "team-z", "zed"])}
    res = sender.ok("broadcast", {"content": "all hands"})
    assert res["recipients"] == ["ops", "team-a", "team-z"]
    for name, peer in peers.items():
        got = [m["content"] for m in peer.receive()]
        assert got == (["all hands"] if name in res["recipients"] else []), name
    # An unrestricted peer's broadcast reaches everyone but itself.
    res = peers["zed"].ok("broadcast", {"content": "x"})
    assert res["recipients"] == ["ops", "outsider", "team-a", "team-lead", "team-z"]


# =========================================================================== bind = "process"
def _bind_policy() -> RulePolicy:
    return RulePolicy([
        PeerRule("root", uids=frozenset({0}), scopes=DEFAULT_SCOPES | {"admin"}),
        PeerRule("pinned", uids=frozenset({BROKER_UID}), bind="process"),
    ])


@pytest.mark.parametrize(("pid", "start_time"), [(11, 111), (10, 222)], ids=["other_pid", "reused_pid"])
def test_bind_process_token_fails_from_another_process(
        make_harness: type[Harness], pid: int, start_time: int) -> None:
    h = make_harness(policy=_bind_policy())
    owner = take(h, attach(h, creds(pid=10, start_time=111)), "pinned")
    intruder = attach(h, creds(pid=pid, start_time=start_time))
    err = intruder.err("authenticate", {"token": owner.token})
    expect(err, -32001, "token_process_mismatch")
    assert intruder.conn.session is None
    (line,) = h.audit.named("token_process_mismatch")
    assert line["token_pid"] == 10 and line["pid"] == pid
    assert owner.token not in json.dumps(h.audit)
    # The owner is unaffected.
    assert owner.ok("whoami")["instance_id"] == "pinned"


def test_bind_process_token_works_from_the_same_process(make_harness: type[Harness]) -> None:
    h = make_harness(policy=_bind_policy())
    owner = take(h, attach(h, creds(pid=10, start_time=111)), "pinned")
    again = attach(h, creds(pid=10, start_time=111))  # a second connection of the same process
    assert again.ok("authenticate", {"token": owner.token})["instance_id"] == "pinned"
    assert again.ok("whoami")["instance_id"] == "pinned"


def test_bind_uid_token_works_from_another_process(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("mine", uids=frozenset({BROKER_UID}))]))
    owner = take(h, attach(h, creds(pid=10, start_time=111)), "loose")
    other = attach(h, creds(pid=11, start_time=999))
    assert other.ok("authenticate", {"token": owner.token})["instance_id"] == "loose"


# =========================================================================== shared secret
def test_shared_secret_correct_proof_gets_a_token(make_harness: type[Harness]) -> None:
    h = make_harness(shared_secret=SECRET)
    peer = h.connect()
    res = peer.ok("get_token", {"instance_id": "alpha", "shared_secret_proof": proof("alpha")})
    assert res["instance_id"] == "alpha" and res["token"]
    # Upper-case hex is not the proof's spelling; and a proof is per instance id.
    expect(peer.err("get_token", {"instance_id": "alpha", "shared_secret_proof": proof("alpha").upper()}),
           -32002, "bad_shared_secret_proof")


def _two_uids_with_a_secret(make_harness: type[Harness]) -> Harness:
    rules = RulePolicy([PeerRule("both", uids=frozenset({BROKER_UID, OTHER_UID}))])
    return make_harness(policy=rules, shared_secret=SECRET)


def test_a_wrong_proof_is_refused_before_the_names_owner_is_looked_at(make_harness: type[Harness]) -> None:
    h = _two_uids_with_a_secret(make_harness)
    h.connect().ok("get_token", {"instance_id": "alpha", "shared_secret_proof": proof("alpha")})
    stranger = h.connect(uid=OTHER_UID)
    # Without the secret, the peer learns nothing about the name: not -32006 (owned by another UID).
    expect(stranger.err("get_token", {"instance_id": "alpha", "shared_secret_proof": "x" * 64}),
           -32002, "bad_shared_secret_proof")
    # With it, it is told the name is another UID's.
    assert stranger.err("get_token", {"instance_id": "alpha",
                                      "shared_secret_proof": proof("alpha")})["code"] == -32006


def test_a_suffixed_name_takes_the_proof_of_the_name_asked_for(make_harness: type[Harness]) -> None:
    h = _two_uids_with_a_secret(make_harness)
    first = h.connect()
    first.ok("get_token", {"instance_id": "alpha", "shared_secret_proof": proof("alpha")})
    second = h.connect()
    res = second.ok("get_token", {"instance_id": "alpha", "if_taken": "suffix",
                                  "shared_secret_proof": proof("alpha")})
    assert res["instance_id"] == "alpha-2"


@pytest.mark.parametrize(
    "params",
    [
        {"instance_id": "alpha"},
        {"instance_id": "alpha", "shared_secret_proof": None},
        {"instance_id": "alpha", "shared_secret_proof": ""},
        {"instance_id": "alpha", "shared_secret_proof": proof("beta")},
        {"instance_id": "alpha", "shared_secret_proof": proof("alpha", b"wrong")},
        {"instance_id": "alpha", "shared_secret_proof": proof("alpha")[:-1]},
    ],
    ids=["missing", "null", "empty", "other_instance", "other_secret", "truncated"],
)
def test_shared_secret_wrong_or_missing_proof_is_refused(make_harness: type[Harness],
                                                          params: dict[str, Any]) -> None:
    h = make_harness(shared_secret=SECRET)
    peer = h.connect()
    expect(peer.err("get_token", params), -32002, "bad_shared_secret_proof")
    assert peer.conn.session is None
    assert h.broker.store.session_of("alpha") is None
    (line,) = h.audit.named("token_refused")
    assert line["reason"] == "bad_shared_secret_proof"
    assert SECRET.decode() not in json.dumps(h.audit)


def test_without_a_shared_secret_no_proof_is_needed(harness: Harness) -> None:
    assert harness.connect().ok("get_token", {"instance_id": "alpha"})["token"]


def test_shared_secret_failures_are_rate_limited_per_uid(make_harness: type[Harness]) -> None:
    h = make_harness(shared_secret=SECRET)
    cfg = BrokerConfig()
    assert cfg.max_secret_failures == 5
    peer = h.connect()
    for i in range(cfg.max_secret_failures):
        expect(peer.err("get_token", {"instance_id": f"a{i}", "shared_secret_proof": "00" * 32}),
               -32002, "bad_shared_secret_proof")
        h.clock.advance(1)
    h.clock.advance(5)  # 10 s after the first failure
    # Now even a correct proof is refused, from any connection of this uid.
    for who in (peer, h.connect()):
        err = who.err("get_token", {"instance_id": "alpha", "shared_secret_proof": proof("alpha")})
        expect(err, -32003, "secret_rate_limited")
        wait = err["data"]["retry_after_s"]
        assert isinstance(wait, int) and not isinstance(wait, bool)
        assert wait == int(cfg.secret_failure_window_s) - 10
    assert h.audit.named("rate_limited")[0]["method"] == "get_token"
    # Another uid is unaffected.
    root = h.connect(uid=0)
    assert root.ok("get_token", {"instance_id": "rooty", "shared_secret_proof": proof("rooty")})["token"]
    # Still limited one second before retry_after_s has passed ...
    h.clock.advance(wait - 1)
    expect(peer.err("get_token", {"instance_id": "alpha", "shared_secret_proof": proof("alpha")}),
           -32003, "secret_rate_limited")
    # ... and works once it has.
    h.clock.advance(1)
    assert peer.ok("get_token", {"instance_id": "alpha", "shared_secret_proof": proof("alpha")})["token"]


def test_shared_secret_failures_outside_the_window_do_not_add_up(make_harness: type[Harness]) -> None:
    cfg = BrokerConfig(max_secret_failures=3, secret_failure_window_s=10.0)
    h = make_harness(cfg, shared_secret=SECRET)
    peer = h.connect()
    for _ in range(6):  # 6 failures, but never 3 within 10 s
        expect(peer.err("get_token", {"instance_id": "a", "shared_secret_proof": "x"}),
               -32002, "bad_shared_secret_proof")
        h.clock.advance(6)
    assert peer.ok("get_token", {"instance_id": "a", "shared_secret_proof": proof("a")})["token"]


# =========================================================================== admin
def _admin_harness(make_harness: type[Harness]) -> Harness:
    return make_harness(policy=RulePolicy([
        PeerRule("root", uids=frozenset({0}), scopes=DEFAULT_SCOPES | {"admin"}),
        PeerRule("pinned", uids=frozenset({OTHER_UID}), bind="process"),
        PeerRule("mine", uids=frozenset({BROKER_UID})),
    ]))


def test_admin_methods_need_the_admin_scope(make_harness: type[Harness]) -> None:
    h = _admin_harness(make_harness)
    user = take(h, attach(h, creds()), "user")
    take(h, attach(h, creds(OTHER_UID, pid=11)), "victim")
    for method, params in [("list_sessions", None), ("revoke_session", {"instance_id": "victim"})]:
        err = user.err(method, params)
        expect(err, -32002, "scope_missing")
        assert err["data"]["scope"] == "admin"
    assert h.broker.store.session_of("victim") is not None
    # Before any session, admin methods are -32001, even for root.
    expect(attach(h, creds(0, pid=12)).err("list_sessions"), -32001, "no_session")


def test_list_sessions_shows_sessions_without_tokens(make_harness: type[Harness]) -> None:
    h = _admin_harness(make_harness)
    admin = take(h, attach(h, creds(0, pid=1)), "admin")
    user = take(h, attach(h, creds(pid=10)), "user")
    pinned = take(h, attach(h, creds(OTHER_UID, pid=11, start_time=5)), "pinned")
    h.broker.close(user.conn)

    raw = admin.request("list_sessions")
    assert isinstance(raw, bytes)
    for peer in (admin, user, pinned):
        assert peer.token is not None
        digest = hashlib.sha256(peer.token.encode()).digest()
        for form in (peer.token, digest.hex(), base64.b64encode(digest).decode(),
                     base64.urlsafe_b64encode(digest).rstrip(b"=").decode()):
            assert form.encode() not in raw
    assert b"token" not in raw.lower()
    sessions = decode(raw)["result"]["sessions"]
    by_name = {s["instance_id"]: s for s in sessions}
    assert list(by_name) == ["admin", "pinned", "user"]
    assert by_name["user"]["online"] is False
    assert by_name["pinned"]["online"] is True and by_name["admin"]["online"] is True
    assert by_name["pinned"]["bind"] == "process" and by_name["user"]["bind"] == "uid"
    assert (by_name["pinned"]["uid"], by_name["pinned"]["pid"]) == (OTHER_UID, 11)
    assert "admin" in by_name["admin"]["scopes"] and "admin" not in by_name["user"]["scopes"]
    assert by_name["user"]["expires_at"].endswith("Z")
    for s in sessions:
        assert set(s) == {"instance_id", "uid", "pid", "scopes", "expires_at", "online", "bind"}


def test_list_sessions_omits_expired_and_revoked_sessions(make_harness: type[Harness]) -> None:
    h = _admin_harness(make_harness)
    gone = take(h, attach(h, creds(pid=10)), "gone")
    gone.ok("revoke")
    h.clock.advance(BrokerConfig().token_ttl_s - 1)
    take(h, attach(h, creds(pid=11)), "late")
    admin = take(h, attach(h, creds(0, pid=1)), "admin")
    h.clock.advance(2)  # "late" and "admin" are fresh; nothing else is live
    names = [s["instance_id"] for s in admin.ok("list_sessions")["sessions"]]
    assert names == ["admin", "late"]


def test_revoke_session_ends_it_on_every_connection(make_harness: type[Harness]) -> None:
    h = _admin_harness(make_harness)
    admin = take(h, attach(h, creds(0, pid=1)), "admin")
    first = take(h, attach(h, creds(pid=10)), "victim")
    second = attach(h, creds(pid=12))
    second.ok("authenticate", {"token": first.token})
    bystander = take(h, attach(h, creds(pid=13)), "bystander")

    assert admin.ok("revoke_session", {"instance_id": "victim"}) == {"revoked": True}
    for conn_peer in (first, second):
        expect(conn_peer.err("whoami"), -32001, "token_revoked")
        expect(conn_peer.err("send", {"to": "bystander", "content": "x"}), -32001, "token_revoked")
    fresh = attach(h, creds(pid=14))
    expect(fresh.err("authenticate", {"token": first.token}), -32001, "token_invalid")
    assert bystander.ok("whoami")["instance_id"] == "bystander"
    assert "victim" not in [s["instance_id"] for s in admin.ok("list_sessions")["sessions"]]
    assert "victim" not in h.broker.online_instances()
    ended = [e for e in h.audit.named("session_ended") if e["instance"] == "victim"]
    assert len(ended) == 1 and "admin" in ended[0]["why"]
    # The name is free again.
    assert take(h, fresh, "victim").ok("whoami")["instance_id"] == "victim"


def test_revoke_session_of_an_unknown_name_is_not_found(make_harness: type[Harness]) -> None:
    h = _admin_harness(make_harness)
    admin = take(h, attach(h, creds(0, pid=1)), "admin")
    err = admin.err("revoke_session", {"instance_id": "ghost"})
    expect(err, -32005, "no_such_session")
    # A name whose session was already revoked is not found either.
    take(h, attach(h, creds(pid=10)), "once")
    admin.ok("revoke_session", {"instance_id": "once"})
    expect(admin.err("revoke_session", {"instance_id": "once"}), -32005, "no_such_session")


# =========================================================================== replace_policy
def test_reload_removing_a_scope_takes_effect_on_a_live_session(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("mine", uids=frozenset({BROKER_UID}))]))
    alice = take(h, attach(h, creds(pid=10)), "alice")
    bob = take(h, attach(h, creds(pid=11)), "bob")
    alice.ok("send", {"to": "bob", "content": "one"})
    h.broker.take_effects()

    h.broker.replace_policy(RulePolicy([PeerRule("mine-v2", uids=frozenset({BROKER_UID}),
                                                 scopes=frozenset({"receive", "list"}))]), "v2.toml")
    assert not [e for e in h.broker.take_effects() if isinstance(e, Drop)]
    err = alice.err("send", {"to": "bob", "content": "two"})
    expect(err, -32002, "scope_missing")
    assert err["data"]["scope"] == "send"
    assert [m["content"] for m in bob.receive()] == ["one"]
    # What the session reports matches what it may do.
    assert sorted(alice.ok("whoami")["scopes"]) == ["list", "receive"]
    again = attach(h, creds(pid=10))
    assert sorted(again.ok("authenticate", {"token": alice.token})["scopes"]) == ["list", "receive"]
    expect(again.err("send", {"to": "bob", "content": "three"}), -32002, "scope_missing")
    # A new token under the new rule gets only the new rule's scopes.
    carol = take(h, attach(h, creds(pid=12)), "carol")
    assert sorted(carol.ok("whoami")["scopes"]) == ["list", "receive"]
    (line,) = h.audit.named("config_reloaded")
    assert line == {"config": "v2.toml", "connections": 2, "dropped": 0}


def test_reload_does_not_widen_a_live_sessions_scopes(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("narrow", uids=frozenset({BROKER_UID}),
                                                 scopes=frozenset({"receive"}))]))
    alice = take(h, attach(h, creds(pid=10)), "alice")
    h.broker.replace_policy(RulePolicy([PeerRule("wide", uids=frozenset({BROKER_UID}))]))
    expect(alice.err("list_instances"), -32002, "scope_missing")


def test_reload_drops_a_peer_that_is_no_longer_admitted(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("mine", uids=frozenset({BROKER_UID})),
                                        PeerRule("other", uids=frozenset({OTHER_UID}))]))
    kept = take(h, attach(h, creds(OTHER_UID, pid=20)), "kept")
    gone = take(h, attach(h, creds(pid=10)), "gone")
    idle = attach(h, creds(pid=11))  # admitted, no session yet
    h.broker.take_effects()

    h.broker.replace_policy(RulePolicy([PeerRule("other", uids=frozenset({OTHER_UID}))]), "v3")
    drops = {e.conn.conn_id for e in h.broker.take_effects() if isinstance(e, Drop)}
    assert drops == {gone.conn.conn_id, idle.conn.conn_id}
    assert h.broker.store.session_of("gone") is None
    assert "gone" not in h.broker.online_instances()
    expect(gone.err("whoami"), -32001, "token_revoked")
    # The token is dead for good, and the uid is refused at accept.
    assert isinstance(h.broker.accept(creds(pid=12)), bytes)
    assert [e["instance"] for e in h.audit.named("session_ended")] == ["gone"]
    # The other uid carries on.
    assert kept.ok("whoami")["instance_id"] == "kept"
    kept.ok("send", {"to": "kept", "content": "self"})
    (line,) = h.audit.named("config_reloaded")
    assert line["config"] == "v3" and line["dropped"] == 2 and line["connections"] == 3


def test_reload_to_the_default_policy_keeps_the_broker_uid(make_harness: type[Harness]) -> None:
    h = make_harness(policy=RulePolicy([PeerRule("mine", uids=frozenset({BROKER_UID}), scopes=frozenset({"receive"})),
                                        PeerRule("other", uids=frozenset({OTHER_UID}))]))
    mine = take(h, attach(h, creds(pid=10)), "mine")
    other = take(h, attach(h, creds(OTHER_UID, pid=11)), "other")
    h.broker.take_effects()
    h.broker.replace_policy(DefaultPolicy(BROKER_UID))
    drops = [e.conn for e in h.broker.take_effects() if isinstance(e, Drop)]
    assert drops == [other.conn]
    assert mine.conn.admission.rule == "default:broker_uid"
    # The session keeps its narrower scopes: the default policy does not widen them.
    expect(mine.err("send", {"to": "mine", "content": "x"}), -32002, "scope_missing")
    assert mine.receive() == []


def test_a_token_used_from_a_narrower_rule_gets_only_that_rules_scopes(make_harness: type[Harness]) -> None:
    """Same uid, another program: the token works, but only with the scopes both rules grant."""
    h = make_harness(policy=RulePolicy([
        PeerRule("py", uids=frozenset({BROKER_UID}), executables=("/usr/bin/python3*",)),
        PeerRule("other-programs", uids=frozenset({BROKER_UID}), scopes=frozenset({"list", "admin"})),
    ]))
    owner = take(h, attach(h, creds(pid=10)), "agent")
    shell = attach(h, creds(pid=11, exe="/usr/bin/socat"))
    assert shell.conn.admission.rule == "other-programs"
    assert shell.ok("authenticate", {"token": owner.token})["scopes"] == ["list"]
    assert shell.ok("whoami")["scopes"] == ["list"]
    expect(shell.err("send", {"to": "agent", "content": "x"}), -32002, "scope_missing")
    expect(shell.err("list_sessions"), -32002, "scope_missing")  # admin is not in the session
    assert shell.ok("list_instances")["instances"][0]["instance_id"] == "agent"
