"""Pushes go only to connections whose session is live: never to an expired or replaced one.

The new holder of a name is left unsubscribed here, so any push at all is a push to the old,
dead session's connection (possibly another user's): mail meant for someone else.
"""

from __future__ import annotations

from core_harness import AdmitAll, Harness

from parrot_ipc.core import BrokerConfig

TTL_S = 100.0


def make(make_harness: type[Harness]) -> Harness:
    return make_harness(BrokerConfig(token_ttl_s=TTL_S), policy=AdmitAll())


def test_an_expired_subscriber_gets_no_more_pushes(make_harness: type[Harness]) -> None:
    h = make(make_harness)
    bob = h.register("bob")
    bob.ok("subscribe")
    h.clock.advance(TTL_S / 2)
    alice = h.register("alice")
    h.clock.advance(TTL_S / 2)
    alice.ok("send", {"to": "bob", "content": "after bob's token expired"})
    assert h.pushes() == []


def test_rename_onto_an_expired_name_does_not_feed_its_old_connection(make_harness: type[Harness]) -> None:
    h = make(make_harness)
    h.register("bob", uid=1000).ok("subscribe")
    h.clock.advance(TTL_S / 2)
    mallory, alice, carol = h.register("mallory", uid=2000), h.register("alice", uid=1000), h.register("carol", uid=2000)
    h.clock.advance(TTL_S / 2)  # bob's session has now expired; the others' have not
    # Issue 13: the name stays uid 1000's; another UID cannot rename onto it.
    assert mallory.err("rename", {"new_id": "bob"})["data"]["reason"] == "instance_owned_by_other_uid"
    alice.ok("rename", {"new_id": "bob"})
    carol.ok("send", {"to": "bob", "content": "for the new bob only"})
    assert h.pushes() == []
    assert [m["content"] for m in alice.receive()] == ["for the new bob only"]


def test_takeover_after_purge_does_not_feed_the_old_connection(make_harness: type[Harness]) -> None:
    h = make(make_harness)
    h.register("bob", uid=1000).ok("subscribe")
    h.clock.advance(TTL_S + 60)
    h.broker.tick()  # purges the expired session from the store
    # Issue 13: the name stays uid 1000's after its session is purged.
    assert h.connect(uid=2000).err("get_token", {"instance_id": "bob"})["code"] == -32006
    new_bob = h.register("bob", uid=1000)
    h.register("carol", uid=2000).ok("send", {"to": "bob", "content": "for the new session"})
    assert h.pushes() == []
    assert [m["content"] for m in new_bob.receive()] == ["for the new session"]


def test_takeover_by_the_same_uid_stops_pushes_to_the_replaced_connection(harness: Harness) -> None:
    harness.register("bob").ok("subscribe")
    new_bob = harness.register("bob")
    harness.register("carol").ok("send", {"to": "bob", "content": "for the new session"})
    assert harness.pushes() == []
    assert len(new_bob.receive()) == 1
