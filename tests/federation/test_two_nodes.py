"""Two brokers, h1 and h2, on one machine, each with its own socket, state and relay, joined by a
real nats-server on loopback (docs/federation.md)."""

from __future__ import annotations

import json

from fed_harness import drain


def test_alice_at_h1_and_bob_at_h2_exchange_a_message_and_a_reply(nodes) -> None:
    h1, h2 = nodes("h1"), nodes("h2")
    alice, bob = h1.client("alice"), h2.client("bob")
    sent = alice.send("bob@h2", "hello bob")
    assert sent.to == "bob@h2" and sent.status == "queued"
    (got,) = drain(bob, 1, 15)
    assert (got.from_, got.to, got.content) == ("alice@h1", "bob", "hello bob")
    bob.send(got.from_, "hello alice")
    (reply,) = drain(alice, 1, 15)
    assert (reply.from_, reply.content) == ("bob@h2", "hello alice")


def test_a_thousand_messages_each_way_arrive_once_in_order(nodes) -> None:
    h1, h2 = nodes("h1"), nodes("h2")
    alice, bob = h1.client("alice"), h2.client("bob")
    for i in range(1000):
        alice.send("bob@h2", f"a{i}")
        bob.send("alice@h1", f"b{i}")
    at_bob, at_alice = drain(bob, 1000, 60), drain(alice, 1000, 60)
    assert [m.content for m in at_bob] == [f"a{i}" for i in range(1000)]
    assert [m.content for m in at_alice] == [f"b{i}" for i in range(1000)]
    assert {m.from_ for m in at_bob} == {"alice@h1"} and {m.from_ for m in at_alice} == {"bob@h2"}
    assert drain(bob, 1, 1) == []  # nothing doubled behind them


def test_a_node_not_in_remote_gets_an_audited_bounce(nodes) -> None:
    h1 = nodes("h1")
    h2 = nodes("h2", remote='[[remote]]\nnodes = ["h9"]\n')
    alice, _bob = h1.client("alice"), h2.client("bob")
    sent = alice.send("bob@h2", "let me in")
    (bounce,) = drain(alice, 1, 15)
    assert bounce.from_ == "postmaster@h2"
    assert bounce.data["bounce"] == {"id": sent.id, "to": "bob@h2", "reason": "remote_not_allowed"}
    audit = [json.loads(line[line.index("{"):]) for line in h2.log("broker").splitlines()
             if "remote_refused" in line]
    assert audit and audit[0]["node"] == "h1" and audit[0]["reason"] == "remote_not_allowed"


def test_a_remote_message_naming_a_local_sender_is_shown_as_remote(nodes) -> None:
    h1, h2 = nodes("h1"), nodes("h2")
    h2.client("carol")  # a local name on h2
    mallory, bob = h1.client("carol"), h2.client("bob")
    mallory.send("bob@h2", "it is me, carol", data={"from": "carol", "from_id": "carol"})
    (got,) = drain(bob, 1, 15)
    assert got.from_ == "carol@h1"  # never the local carol


def test_send_off_host_is_accepted_while_the_relay_is_down_and_arrives_later(nodes) -> None:
    h1, h2 = nodes("h1", relay=False), nodes("h2")
    alice, bob = h1.client("alice"), h2.client("bob")
    ids = [alice.send("bob@h2", f"m{i}").id for i in range(20)]
    assert len(set(ids)) == 20
    assert drain(bob, 1, 1) == []
    h1.start_relay()
    assert [m.content for m in drain(bob, 20, 20)] == [f"m{i}" for i in range(20)]
