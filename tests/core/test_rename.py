"""Renames: forwarding of the old name, the rate limit, conflicts, and moving queued mail."""

from __future__ import annotations

from core_harness import Harness

from parrot_ipc.core import BrokerConfig

RATE_LIMITED, CONFLICT, INVALID_PARAMS = -32003, -32006, -32602


def test_rename_changes_the_sessions_instance(harness: Harness) -> None:
    alice = harness.register("alice")
    assert alice.ok("rename", {"new_id": "alicia"}) == {"instance_id": "alicia", "previous_id": "alice"}
    assert alice.ok("whoami")["instance_id"] == "alicia"
    assert "alicia" in harness.broker.online_instances()
    assert "alice" not in harness.broker.online_instances()
    names = {i["instance_id"]: i for i in alice.ok("list_instances")["instances"]}
    assert "alice" not in names and names["alicia"]["online"]
    (event,) = harness.audit.named("renamed")
    assert event["from"] == "alice" and event["to"] == "alicia"


def test_the_token_follows_the_rename(harness: Harness) -> None:
    alice = harness.register("alice")
    alice.ok("rename", {"new_id": "alicia"})
    assert harness.connect().ok("authenticate", {"token": alice.token})["instance_id"] == "alicia"


def test_mail_to_the_old_name_is_forwarded_then_stops(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(rename_forward_s=100))
    alice, bob = h.register("alice"), h.register("bob")
    alice.ok("rename", {"new_id": "alicia"})
    h.clock.advance(99)
    result = bob.ok("send", {"to": "alice", "content": "still there?"})
    assert result["to"] == "alicia" and result["status"] == "forwarded"
    assert bob.ok("send", {"to": "alicia", "content": "direct"})["status"] == "queued"
    assert [m["content"] for m in alice.receive()] == ["still there?", "direct"]
    h.clock.advance(1)
    late = bob.ok("send", {"to": "alice", "content": "too late"})
    assert late["to"] == "alice" and late["status"] == "queued"
    assert alice.receive() == []
    # The stale mail waits for whoever takes the old name next.
    assert [m["content"] for m in h.register("alice").receive()] == ["too late"]


def test_forwards_follow_a_chain_of_renames(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(rename_interval_s=0))
    alice, bob = h.register("a1"), h.register("bob")
    alice.ok("rename", {"new_id": "a2"})
    alice.ok("rename", {"new_id": "a3"})
    result = bob.ok("send", {"to": "a1", "content": "hop hop"})
    assert result["to"] == "a3" and result["status"] == "forwarded"
    assert [m["content"] for m in alice.receive()] == ["hop hop"]


def test_taking_the_old_name_ends_its_forward(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    alice.ok("rename", {"new_id": "alicia"})
    newcomer = harness.register("alice")
    result = bob.ok("send", {"to": "alice", "content": "for the newcomer"})
    assert result["to"] == "alice" and result["status"] == "queued"
    assert [m["content"] for m in newcomer.receive()] == ["for the newcomer"]
    assert alice.receive() == []


def test_one_rename_per_interval(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(rename_interval_s=3600))
    alice = h.register("alice")
    alice.ok("rename", {"new_id": "a2"})
    h.clock.advance(100.5)
    error = alice.err("rename", {"new_id": "a3"})
    assert error["code"] == RATE_LIMITED and error["data"]["reason"] == "rename_rate_limited"
    retry = error["data"]["retry_after_s"]
    assert isinstance(retry, int) and retry > 0
    assert retry == 3500  # 3600 s - 100.5 s, rounded up
    assert alice.ok("whoami")["instance_id"] == "a2"
    assert h.audit.named("rate_limited")[-1]["retry_after_s"] == retry
    h.clock.advance(retry - 1)
    assert alice.err("rename", {"new_id": "a3"})["data"]["retry_after_s"] == 1
    h.clock.advance(1)
    assert alice.ok("rename", {"new_id": "a3"})["previous_id"] == "a2"


def test_rate_limit_retry_after_is_at_least_one_second(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(rename_interval_s=10))
    alice = h.register("alice")
    alice.ok("rename", {"new_id": "a2"})
    h.clock.advance(9.999)
    assert alice.err("rename", {"new_id": "a3"})["data"]["retry_after_s"] == 1


def test_rename_to_a_live_held_name_conflicts(harness: Harness) -> None:
    alice, _ = harness.register("alice"), harness.register("bob")
    error = alice.err("rename", {"new_id": "bob"})
    assert error["code"] == CONFLICT and error["data"]["reason"] == "instance_taken"
    assert alice.ok("whoami")["instance_id"] == "alice"
    # A refused rename does not use up the interval.
    assert alice.ok("rename", {"new_id": "alicia"})["instance_id"] == "alicia"


def test_rename_to_a_name_whose_session_expired_is_allowed(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(token_ttl_s=100))
    h.register("bob")
    h.clock.advance(50)
    alice = h.register("alice")
    h.clock.advance(50)
    assert alice.ok("rename", {"new_id": "bob"})["instance_id"] == "bob"


def test_rename_to_the_current_name_is_invalid(harness: Harness) -> None:
    alice = harness.register("alice")
    assert alice.err("rename", {"new_id": "alice"})["code"] == INVALID_PARAMS


def test_rename_to_a_bad_name_is_invalid(harness: Harness) -> None:
    alice = harness.register("alice")
    assert alice.err("rename", {"new_id": "../etc"})["code"] == INVALID_PARAMS
    assert alice.ok("whoami")["instance_id"] == "alice"


def test_queued_mail_moves_to_the_new_name(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    for i in range(3):
        bob.ok("send", {"to": "alice", "content": str(i)})
    alice.ok("rename", {"new_id": "alicia"})
    names = {i["instance_id"]: i["queued"] for i in bob.ok("list_instances")["instances"]}
    assert names["alicia"] == 3 and "alice" not in names
    msgs = alice.receive()
    assert [m["content"] for m in msgs] == ["0", "1", "2"]
    assert alice.ok("ack", {"ids": [m["id"] for m in msgs]}) == {"acked": 3}


def test_leased_mail_moves_and_is_redelivered_under_the_new_name(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(lease_s=10))
    alice, bob = h.register("alice"), h.register("bob")
    bob.ok("send", {"to": "alice", "content": "leased"})
    (msg,) = alice.receive()
    alice.ok("rename", {"new_id": "alicia"})
    assert alice.receive() == []
    h.clock.advance(10)
    h.broker.tick()
    assert alice.receive() == [msg]


def test_rename_onto_a_name_with_waiting_mail_merges_in_arrival_order(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    bob.ok("send", {"to": "alice", "content": "1 to alice"})
    bob.ok("send", {"to": "spare", "content": "2 to spare"})
    bob.ok("send", {"to": "alice", "content": "3 to alice"})
    alice.ok("rename", {"new_id": "spare"})
    assert [m["content"] for m in alice.receive()] == ["1 to alice", "2 to spare", "3 to alice"]
