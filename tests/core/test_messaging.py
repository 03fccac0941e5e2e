"""Mail: send, receive leases, ack, redelivery, idempotency, bounds, broadcast, long-poll, push."""

from __future__ import annotations

import pytest
from core_harness import Harness, decode

from parrot_ipc.core import BrokerConfig, Push, WaitForMail, Wake
from parrot_ipc.core.timefmt import parse_rfc3339

MAILBOX_FULL = -32007


# --------------------------------------------------------------------------- send / receive
def test_send_takes_the_sender_from_the_session_and_ignores_from_fields(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    result = alice.ok("send", {"to": "bob", "content": "hi", "from": "mallory", "from_id": "mallory"})
    assert result["to"] == "bob" and result["status"] == "queued"
    (msg,) = bob.receive()
    assert msg["from"] == "alice"
    assert msg["id"] == result["id"]
    assert msg["to"] == "bob" and msg["content"] == "hi"
    assert "data" not in msg
    assert parse_rfc3339(msg["sent_at"]) == pytest.approx(harness.clock.now, abs=0.001)


def test_data_object_round_trips(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    data = {"n": 1, "nested": {"list": [1, "two", None, True]}, "text": "caf\u00e9"}
    alice.ok("send", {"to": "bob", "content": "", "data": data})
    (msg,) = bob.receive()
    assert msg["data"] == data and msg["content"] == ""


def test_messages_arrive_in_fifo_order_with_ids_sorted_by_arrival(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    sent = []
    for i in range(12):
        if i % 3 == 0:
            harness.clock.advance(0.0004)  # several sends inside one millisecond, some across
        sent.append(alice.ok("send", {"to": "bob", "content": f"m{i}"})["id"])
    assert sent == sorted(sent) and len(set(sent)) == len(sent)
    first = bob.receive(max=5)
    rest = bob.receive()
    assert [m["content"] for m in first + rest] == [f"m{i}" for i in range(12)]
    assert [m["id"] for m in first + rest] == sent


def test_ids_keep_increasing_when_the_clock_steps_back(harness: Harness) -> None:
    alice, _ = harness.register("alice"), harness.register("bob")
    before = alice.ok("send", {"to": "bob", "content": "1"})["id"]
    harness.clock.advance(-3600)
    after = alice.ok("send", {"to": "bob", "content": "2"})["id"]
    assert after > before


def test_receive_leases_so_a_second_receive_gets_nothing(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    alice.ok("send", {"to": "bob", "content": "once"})
    assert [m["content"] for m in bob.receive()] == ["once"]
    assert bob.receive() == []
    # Another connection of the same instance does not see the leased message either.
    twin = harness.connect()
    twin.ok("authenticate", {"token": bob.token})
    assert twin.receive() == []


def test_ack_deletes_so_the_message_is_not_redelivered(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    alice.ok("send", {"to": "bob", "content": "x"})
    (msg,) = bob.receive()
    assert bob.ok("ack", {"ids": [msg["id"]]}) == {"acked": 1}
    assert bob.ok("ack", {"ids": [msg["id"]]}) == {"acked": 0}
    harness.clock.advance(harness.broker.config.lease_s * 2)
    harness.broker.tick()
    assert bob.receive() == []


def test_unacked_message_is_redelivered_after_the_lease(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(lease_s=30))
    alice, bob = h.register("alice"), h.register("bob")
    alice.ok("send", {"to": "bob", "content": "retry me"})
    (msg,) = bob.receive()
    assert h.broker.next_deadline() == pytest.approx(h.clock.now + 30)
    h.clock.advance(29.9)
    h.broker.tick()
    assert bob.receive() == []
    h.clock.advance(0.1)
    h.broker.tick()
    assert Wake("bob") in h.broker.take_effects()
    (again,) = bob.receive()
    assert again == msg


def test_ack_of_another_instances_message_acks_nothing(harness: Harness) -> None:
    alice, bob, eve = harness.register("alice"), harness.register("bob"), harness.register("eve")
    alice.ok("send", {"to": "bob", "content": "private"})
    mid = alice.ok("send", {"to": "bob", "content": "private 2"})["id"]
    assert eve.ok("ack", {"ids": [mid]}) == {"acked": 0}
    assert [m["id"] for m in bob.receive()][-1] == mid


def test_partial_ack_leaves_the_rest_leased_then_redelivered(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(lease_s=10))
    alice, bob = h.register("alice"), h.register("bob")
    for i in range(3):
        alice.ok("send", {"to": "bob", "content": str(i)})
    msgs = bob.receive()
    assert bob.ok("ack", {"ids": [msgs[1]["id"], "unknown-id"]}) == {"acked": 1}
    h.clock.advance(10)
    h.broker.tick()
    assert [m["content"] for m in bob.receive()] == ["0", "2"]


# --------------------------------------------------------------------------- idempotency
def test_repeated_idempotency_key_returns_the_first_id_and_queues_one(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    first = alice.ok("send", {"to": "bob", "content": "pay 10", "idempotency_key": "k1"})
    second = alice.ok("send", {"to": "bob", "content": "pay 10", "idempotency_key": "k1"})
    other = alice.ok("send", {"to": "bob", "content": "pay 10", "idempotency_key": "k2"})
    assert second == first
    assert other["id"] != first["id"]
    assert [m["id"] for m in bob.receive()] == [first["id"], other["id"]]


def test_idempotency_keys_are_per_sender(harness: Harness) -> None:
    alice, carol, bob = harness.register("alice"), harness.register("carol"), harness.register("bob")
    a = alice.ok("send", {"to": "bob", "content": "x", "idempotency_key": "same"})
    c = carol.ok("send", {"to": "bob", "content": "x", "idempotency_key": "same"})
    assert a["id"] != c["id"]
    assert len(bob.receive()) == 2


def test_idempotency_key_expires(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(idempotency_ttl_s=60))
    alice, bob = h.register("alice"), h.register("bob")
    first = alice.ok("send", {"to": "bob", "content": "x", "idempotency_key": "k"})
    h.clock.advance(60)
    again = alice.ok("send", {"to": "bob", "content": "x", "idempotency_key": "k"})
    assert again["id"] != first["id"]
    assert len(bob.receive()) == 2


# --------------------------------------------------------------------------- bounds
def test_full_mailbox_is_refused_until_mail_is_acked(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(max_mailbox_messages=2))
    alice, bob = h.register("alice"), h.register("bob")
    alice.ok("send", {"to": "bob", "content": "1"})
    alice.ok("send", {"to": "bob", "content": "2"})
    error = alice.err("send", {"to": "bob", "content": "3"})
    assert error["code"] == MAILBOX_FULL and error["data"]["reason"] == "mailbox_full"
    assert "3" not in error["message"]
    msgs = bob.receive()
    assert [m["content"] for m in msgs] == ["1", "2"]
    # Leased but unacked mail still counts against the bound.
    assert alice.err("send", {"to": "bob", "content": "3"})["code"] == MAILBOX_FULL
    bob.ok("ack", {"ids": [msgs[0]["id"]]})
    assert alice.ok("send", {"to": "bob", "content": "3"})["status"] == "queued"


def test_mailbox_byte_bound(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(max_mailbox_bytes=10))
    alice, bob = h.register("alice"), h.register("bob")
    alice.ok("send", {"to": "bob", "content": "x" * 10})
    assert alice.err("send", {"to": "bob", "content": "y"})["code"] == MAILBOX_FULL
    assert alice.err("send", {"to": "carol", "content": "z" * 11})["code"] == MAILBOX_FULL
    assert [m["content"] for m in bob.receive()] == ["x" * 10]


def test_full_mailbox_with_idempotency_key_does_not_remember_the_key(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(max_mailbox_messages=1))
    alice, bob = h.register("alice"), h.register("bob")
    alice.ok("send", {"to": "bob", "content": "1"})
    assert alice.err("send", {"to": "bob", "content": "2", "idempotency_key": "k"})["code"] == MAILBOX_FULL
    bob.ok("ack", {"ids": [m["id"] for m in bob.receive()]})
    result = alice.ok("send", {"to": "bob", "content": "2", "idempotency_key": "k"})
    assert [m["id"] for m in bob.receive()] == [result["id"]]


# --------------------------------------------------------------------------- unknown names
def test_mail_to_an_unknown_name_waits_for_whoever_registers_it(harness: Harness) -> None:
    alice = harness.register("alice")
    result = alice.ok("send", {"to": "later", "content": "welcome"})
    assert result == {"id": result["id"], "to": "later", "status": "queued"}
    harness.clock.advance(5)
    later = harness.register("later")
    (msg,) = later.receive()
    assert msg["content"] == "welcome" and msg["from"] == "alice" and msg["id"] == result["id"]


# --------------------------------------------------------------------------- broadcast
def test_broadcast_reaches_live_instances_except_the_sender(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(token_ttl_s=1000))
    h.register("old")  # will have expired by the broadcast
    h.clock.advance(500)
    alice, bob, carol = h.register("alice"), h.register("bob"), h.register("carol")
    h.register("gone").ok("revoke")
    alice.ok("send", {"to": "nobody-yet", "content": "queued only"})
    h.clock.advance(600)
    result = alice.ok("broadcast", {"content": "all hands", "data": {"k": 1}})
    assert result["recipients"] == ["bob", "carol"]
    assert isinstance(result["id"], str) and result["id"]
    for peer in (bob, carol):
        (msg,) = peer.receive()
        assert msg["from"] == "alice" and msg["content"] == "all hands" and msg["data"] == {"k": 1}
    assert alice.receive() == []


def test_broadcast_skips_full_mailboxes(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(max_mailbox_messages=1))
    alice, h_bob, _ = h.register("alice"), h.register("bob"), h.register("carol")
    alice.ok("send", {"to": "bob", "content": "fills it"})
    assert alice.ok("broadcast", {"content": "hey"})["recipients"] == ["carol"]
    assert [m["content"] for m in h_bob.receive()] == ["fills it"]


# --------------------------------------------------------------------------- list_instances
def test_list_instances_shows_online_queued_and_last_seen(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    for i in range(3):
        alice.ok("send", {"to": "bob", "content": str(i)})
    harness.clock.advance(42)
    listing = {i["instance_id"]: i for i in alice.ok("list_instances")["instances"]}
    assert set(listing) == {"alice", "bob"}
    assert listing["bob"]["online"] and listing["bob"]["queued"] == 3
    assert listing["alice"]["queued"] == 0
    assert parse_rfc3339(listing["alice"]["last_seen"]) == pytest.approx(harness.clock.now, abs=0.001)
    assert parse_rfc3339(listing["bob"]["last_seen"]) == pytest.approx(harness.clock.now - 42, abs=0.001)
    harness.broker.close(bob.conn)
    listing = {i["instance_id"]: i for i in alice.ok("list_instances")["instances"]}
    assert not listing["bob"]["online"] and listing["bob"]["queued"] == 3


# --------------------------------------------------------------------------- long-poll
def test_receive_with_wait_and_no_mail_returns_a_wait_then_polls(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    wait = bob.wait_receive(wait_s=5, max=10)
    assert isinstance(wait, WaitForMail)
    assert wait.wait_s == 5 and wait.max_count == 10 and wait.request_id is not None
    assert harness.broker.poll_receive(bob.conn, wait, final=False) is None
    harness.broker.take_effects()
    alice.ok("send", {"to": "bob", "content": "woke you"})
    assert Wake("bob") in harness.broker.take_effects()
    resp = decode(harness.broker.poll_receive(bob.conn, wait, final=False))
    assert resp["id"] == wait.request_id
    assert [m["content"] for m in resp["result"]["messages"]] == ["woke you"]


def test_final_poll_with_no_mail_answers_empty(harness: Harness) -> None:
    bob = harness.register("bob")
    wait = bob.wait_receive(wait_s=1)
    resp = decode(harness.broker.poll_receive(bob.conn, wait, final=True))
    assert resp["id"] == wait.request_id and resp["result"] == {"messages": []}


def test_receive_with_wait_returns_at_once_when_mail_is_there(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    alice.ok("send", {"to": "bob", "content": "ready"})
    assert [m["content"] for m in bob.receive(wait_s=30)] == ["ready"]


def test_poll_after_the_session_was_revoked_answers_an_error(harness: Harness) -> None:
    bob = harness.register("bob")
    wait = bob.wait_receive(wait_s=5)
    bob.ok("revoke")
    resp = decode(harness.broker.poll_receive(bob.conn, wait, final=False))
    assert resp["id"] == wait.request_id and resp["error"]["code"] == -32001


# --------------------------------------------------------------------------- subscribe / push
def test_subscribe_pushes_notifications_to_the_subscriber_within_the_window(
    make_harness: type[Harness],
) -> None:
    h = make_harness(BrokerConfig(push_window=2))
    alice, bob = h.register("alice"), h.register("bob")
    assert bob.ok("subscribe") == {"subscribed": True}
    h.broker.take_effects()
    ids = [alice.ok("send", {"to": "bob", "content": f"m{i}"})["id"] for i in range(3)]
    pushes = h.pushes()
    assert [conn for conn, _ in pushes] == [bob.conn, bob.conn]
    notes = [note for _, note in pushes]
    assert all(n["method"] == "message" and "id" not in n for n in notes)
    assert [n["params"]["id"] for n in notes] == ids[:2]
    assert notes[0]["params"]["from"] == "alice"
    # Pushed mail is leased: a receive does not hand it out again, but the third waits.
    assert [m["id"] for m in bob.receive()] == [ids[2]]


def test_ack_refills_the_push_window(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(push_window=1))
    alice, bob = h.register("alice"), h.register("bob")
    bob.ok("subscribe")
    ids = [alice.ok("send", {"to": "bob", "content": str(i)})["id"] for i in range(3)]
    assert [n["params"]["id"] for _, n in h.pushes()] == ids[:1]
    bob.ok("ack", {"ids": [ids[0]]})
    assert [n["params"]["id"] for _, n in h.pushes()] == ids[1:2]
    bob.ok("ack", {"ids": [ids[1]]})
    assert [n["params"]["id"] for _, n in h.pushes()] == ids[2:3]
    bob.ok("ack", {"ids": [ids[2]]})
    assert h.pushes() == []


def test_subscribe_pushes_mail_that_was_already_queued(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    mid = alice.ok("send", {"to": "bob", "content": "early"})["id"]
    harness.broker.take_effects()
    bob.ok("subscribe")
    ((conn, note),) = harness.pushes()
    assert conn is bob.conn and note["params"]["id"] == mid


def test_unsubscribed_connections_get_no_pushes(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    alice.ok("send", {"to": "bob", "content": "pull me"})
    assert harness.pushes() == []
    effects = harness.broker.take_effects()
    assert not any(isinstance(e, Push) for e in effects)
    assert len(bob.receive()) == 1


def test_unacked_push_is_pushed_again_after_the_lease(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(lease_s=20, push_window=5))
    alice, bob = h.register("alice"), h.register("bob")
    bob.ok("subscribe")
    mid = alice.ok("send", {"to": "bob", "content": "again"})["id"]
    assert [n["params"]["id"] for _, n in h.pushes()] == [mid]
    h.clock.advance(20)
    h.broker.tick()
    assert [n["params"]["id"] for _, n in h.pushes()] == [mid]


def test_closing_a_subscriber_stops_pushes(harness: Harness) -> None:
    alice, bob = harness.register("alice"), harness.register("bob")
    bob.ok("subscribe")
    harness.broker.close(bob.conn)
    alice.ok("send", {"to": "bob", "content": "later"})
    assert harness.pushes() == []
