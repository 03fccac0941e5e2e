"""Names are owned (issue 13, finding 1) and sessions of one owner don't fight (finding 2), in
the sans-I/O core. The same attacks with real Unix users are in ``tests/root/test_names_owned.py``.

UIDs: 1000 is eve, 2000 is mallory, 0 is root (the sender).
"""

from __future__ import annotations

from typing import Any

from core_harness import AdmitAll, Harness, Peer

from parrot_ipc.core import BrokerConfig, PeerCredentials, PeerRule, RulePolicy
from parrot_ipc.core.policy import ALL_SCOPES, DEFAULT_SCOPES

EVE, MALLORY, ROOT = 1000, 2000, 0
CONFLICT, FORBIDDEN, NOT_FOUND = -32006, -32002, -32005


def make(**cfg: Any) -> Harness:
    return Harness(BrokerConfig(**cfg), policy=AdmitAll(ALL_SCOPES))


def _owned_error(peer: Peer, method: str, params: dict[str, Any]) -> None:
    err = peer.err(method, params)
    assert (err["code"], err["data"]["reason"]) == (CONFLICT, "instance_owned_by_other_uid"), err


def _mail_for(h: Harness, name: str, n: int = 2) -> Peer:
    root = h.register("root-sender", uid=ROOT)
    for i in range(n):
        assert root.ok("send", {"to": name, "content": f"secret {i}"})["to"] == name
    return root


# --------------------------------------------------------------------------- finding 1
def test_revoke_does_not_free_the_name_for_another_uid_and_the_mail_waits_for_its_owner() -> None:
    h = make()
    eve = h.register("eve-b", uid=EVE)
    _mail_for(h, "eve-b")
    eve.ok("revoke")
    mallory = h.connect(uid=MALLORY)
    _owned_error(mallory, "get_token", {"instance_id": "eve-b"})
    assert mallory.conn.session is None
    assert [m["content"] for m in h.register("eve-b", uid=EVE).receive()] == ["secret 0", "secret 1"]


def test_token_expiry_does_not_free_the_name() -> None:
    h = make(token_ttl_s=10)
    h.register("eve-c", uid=EVE)
    _mail_for(h, "eve-c")
    h.clock.advance(3600)
    h.broker.tick()  # purges the expired session
    _owned_error(h.connect(uid=MALLORY), "get_token", {"instance_id": "eve-c"})
    assert len(h.register("eve-c", uid=EVE).receive()) == 2


def test_rename_onto_a_name_another_uid_owns_is_32006_and_moves_nothing() -> None:
    h = make()
    h.register("eve-f", uid=EVE).ok("revoke")
    _mail_for(h, "eve-f")
    mallory = h.register("mallory-1", uid=MALLORY)
    _owned_error(mallory, "rename", {"new_id": "eve-f"})
    assert mallory.ok("whoami")["instance_id"] == "mallory-1" and mallory.receive() == []
    assert h.broker.store.mailbox_usage("eve-f")[0] == 2


def test_after_a_rename_the_old_name_stays_owned_and_forwards_to_the_renamer() -> None:
    h = make()
    eve = h.register("eve-d", uid=EVE)
    eve.ok("rename", {"new_id": "eve-e"})
    _owned_error(h.connect(uid=MALLORY), "get_token", {"instance_id": "eve-d"})
    res = h.register("root-sender", uid=ROOT).ok("send", {"to": "eve-d", "content": "to the old name"})
    assert (res["to"], res["status"]) == ("eve-e", "forwarded")
    assert [m["content"] for m in eve.receive()] == ["to the old name"]


def test_a_forward_is_never_followed_to_a_name_of_another_owner() -> None:
    h = make()
    eve = h.register("eve-d", uid=EVE)
    eve.ok("rename", {"new_id": "eve-e"})
    eve.ok("release", {"instance_id": "eve-e"})
    mallory = h.register("eve-e", uid=MALLORY)  # free again, so mallory may take it
    res = h.register("root-sender", uid=ROOT).ok("send", {"to": "eve-d", "content": "for eve"})
    assert (res["to"], res["status"]) == ("eve-d", "queued")
    assert mallory.receive() == []
    assert [m["content"] for m in h.register("eve-d", uid=EVE).receive()] == ["for eve"]


def test_the_first_claim_of_a_name_with_waiting_mail_is_audited_and_gets_the_mail() -> None:
    h = make()
    _mail_for(h, "ghost", 3)
    ghost = h.register("ghost", uid=EVE)
    (claim,) = [e for e in h.audit.named("name_claimed") if e["instance"] == "ghost"]
    assert (claim["uid"], claim["queued"], claim["method"]) == (EVE, 3, "get_token")
    assert len(ghost.receive()) == 3
    assert h.broker.store.name_owner("ghost") == EVE


def test_ownership_is_refused_and_audited_whether_or_not_the_owner_is_online() -> None:
    h = make()
    h.register("eve-a", uid=EVE)  # online
    _owned_error(h.connect(uid=MALLORY), "get_token", {"instance_id": "eve-a"})
    refused = h.audit.named("token_refused")
    assert refused[-1]["owner_uid"] == EVE and refused[-1]["uid"] == MALLORY
    assert refused[-1]["reason"] == "instance_owned_by_other_uid"


# --------------------------------------------------------------------------- release
def test_the_owner_releases_a_name_its_mail_is_dropped_then_another_uid_may_take_it() -> None:
    h = make()
    eve = h.register("eve-b", uid=EVE)
    _mail_for(h, "eve-b")
    assert h.connect(uid=EVE).ok("release", {"instance_id": "eve-b"}) == \
        {"instance_id": "eve-b", "owner_uid": EVE, "dropped": 2}
    assert eve.err("whoami")["data"] == {"reason": "token_revoked", "why": "released by its owner"}
    mallory = h.register("eve-b", uid=MALLORY)
    assert mallory.receive() == []
    assert h.audit.named("name_released")[0]["dropped"] == 2


def test_release_by_another_uid_is_32006_and_of_an_unowned_name_is_32005() -> None:
    h = make()
    h.register("eve-b", uid=EVE)
    _owned_error(h.connect(uid=MALLORY), "release", {"instance_id": "eve-b"})
    err = h.connect(uid=EVE).err("release", {"instance_id": "nobody"})
    assert (err["code"], err["data"]["reason"]) == (NOT_FOUND, "name_not_owned")


def test_admin_release_frees_any_name_and_needs_admin() -> None:
    h = Harness(policy=AdmitAll(DEFAULT_SCOPES))
    h.register("eve-b", uid=EVE)
    err = h.register("x", uid=MALLORY).err("admin_release", {"instance_id": "eve-b"})
    assert (err["code"], err["data"]["reason"]) == (FORBIDDEN, "scope_missing")
    h2 = make()
    h2.register("eve-b", uid=EVE)
    assert h2.register("admin", uid=ROOT).ok("admin_release", {"instance_id": "eve-b"})["owner_uid"] == EVE
    assert h2.register("eve-b", uid=MALLORY).ok("whoami")["uid"] == MALLORY


def test_idle_names_with_empty_mailboxes_are_released_only_when_configured() -> None:
    for idle_s, freed in ((0.0, False), (600.0, True)):
        h = make(name_idle_release_s=idle_s, token_ttl_s=60)
        h.register("idle", uid=EVE)
        h.register("busy", uid=EVE)
        _mail_for(h, "busy", 1)
        h.clock.advance(3600)
        h.broker.tick()
        assert (h.broker.store.name_owner("idle") is None) is freed
        assert h.broker.store.name_owner("busy") == EVE  # mail waits: never freed
        assert bool([e for e in h.audit.named("name_released") if e.get("why") == "idle"]) is freed


def test_a_live_session_keeps_its_name_from_idle_release() -> None:
    h = make(name_idle_release_s=10)
    eve = h.register("eve-live", uid=EVE)
    h.clock.advance(3600)
    h.broker.tick()
    assert h.broker.store.name_owner("eve-live") == EVE and eve.ok("whoami")["uid"] == EVE


# --------------------------------------------------------------------------- names patterns
def _names_policy(names: tuple[str, ...]) -> RulePolicy:
    rule = PeerRule(label="agents", uids=frozenset({EVE, MALLORY}), scopes=ALL_SCOPES, names=names)
    return RulePolicy([rule], {EVE: "eve", MALLORY: "mallory"}.get)


def test_a_rule_names_pattern_with_user_limits_what_a_peer_may_claim() -> None:
    h = Harness(policy=_names_policy(("{user}-*", "shared")))
    eve = h.register("eve-1", uid=EVE)
    for method, params in (("get_token", {"instance_id": "mallory-1"}), ("rename", {"new_id": "bob"})):
        err = (h.connect(uid=EVE) if method == "get_token" else eve).err(method, params)
        assert (err["code"], err["data"]["reason"]) == (FORBIDDEN, "instance_name_not_allowed")
    assert h.register("mallory-1", uid=MALLORY).ok("whoami")["uid"] == MALLORY
    assert h.register("shared", uid=EVE).ok("whoami")["instance_id"] == "shared"


def test_user_placeholder_fails_closed_for_a_uid_without_a_name() -> None:
    policy = RulePolicy([PeerRule(label="r", uids=frozenset({3000}), names=("{user}-*",))], {}.get)
    adm = policy.admit(PeerCredentials(1, 3000, 3000))
    assert adm.allowed and not adm.may_claim("-x") and not adm.may_claim("anything")


# --------------------------------------------------------------------------- finding 2
def test_if_taken_suffix_gives_a_second_live_session_name_2_and_leaves_the_first_alone() -> None:
    h = make()
    first = h.register("claude-1", uid=EVE)
    second = h.connect(uid=EVE)
    assert second.ok("get_token", {"instance_id": "claude-1", "if_taken": "suffix"})["instance_id"] == "claude-1-2"
    third = h.connect(uid=EVE)
    assert third.ok("get_token", {"instance_id": "claude-1", "if_taken": "suffix"})["instance_id"] == "claude-1-3"
    assert first.ok("whoami")["instance_id"] == "claude-1"
    assert second.ok("whoami")["instance_id"] == "claude-1-2"
    assert [e["instance"] for e in h.audit.named("instance_suffixed")] == ["claude-1-2", "claude-1-3"]


def test_if_taken_suffix_takes_over_a_live_session_nobody_is_connected_to() -> None:
    h = make()
    gone = h.register("claude-1", uid=EVE)
    h.broker.close(gone.conn)  # its process exited; the session is live but offline
    again = h.connect(uid=EVE)
    assert again.ok("get_token", {"instance_id": "claude-1", "if_taken": "suffix"})["instance_id"] == "claude-1"


def test_if_taken_fail_is_32006_instance_taken_and_replace_is_v1_takeover() -> None:
    h = make()
    first = h.register("claude-1", uid=EVE)
    err = h.connect(uid=EVE).err("get_token", {"instance_id": "claude-1", "if_taken": "fail"})
    assert (err["code"], err["data"]["reason"]) == (CONFLICT, "instance_taken")
    assert first.ok("whoami")["instance_id"] == "claude-1"
    h.register("claude-1", uid=EVE)  # the default, "replace": protocol v1
    assert first.err("whoami")["data"] == {"reason": "token_revoked", "why": "replaced"}


def test_if_taken_never_crosses_to_another_uids_name() -> None:
    h = make()
    h.register("claude-1", uid=EVE)
    _owned_error(h.connect(uid=MALLORY), "get_token", {"instance_id": "claude-1", "if_taken": "suffix"})
