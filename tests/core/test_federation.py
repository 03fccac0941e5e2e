"""Federation in the core (docs/federation.md): ``name@node`` addresses, the outbox, the relay's
methods, the ``[[remote]]`` rules, and that a remote message never carries a local identity."""

from __future__ import annotations

from typing import Any

import pytest
from core_harness import BROKER_UID, Harness, Peer

from parrot_ipc.core import BrokerConfig, DefaultPolicy, PeerCredentials
from parrot_ipc.core.policy import (
    DEFAULT_SCOPES,
    SCOPE_RELAY,
    SCOPE_REMOTE_SEND,
    PeerRule,
    RemoteRule,
    RemoteRules,
    RulePolicy,
)

OTHER_UID = 2000


def _h2(remote: RemoteRules | None = None, node: str | None = "h2") -> Harness:
    rules = remote if remote is not None else RemoteRules((RemoteRule("r", ("h1",), ("bob", "ci-*")),))
    return Harness(BrokerConfig(node=node), policy=DefaultPolicy(BROKER_UID, rules))


def _deliver(relay: Peer, **over: Any) -> dict[str, Any]:
    params = {"id": "m1", "node": "h1", "from": "alice", "to": "bob", "content": "hi", **over}
    return relay.call("relay_deliver", params)


def test_default_policy_gives_relay_only_to_the_broker_uid() -> None:
    own = DefaultPolicy(BROKER_UID).admit(PeerCredentials(1, BROKER_UID, BROKER_UID))
    root = DefaultPolicy(BROKER_UID).admit(PeerCredentials(1, 0, 0))
    assert SCOPE_RELAY in own.scopes and SCOPE_REMOTE_SEND in own.scopes
    assert SCOPE_RELAY not in root.scopes
    assert SCOPE_REMOTE_SEND not in DEFAULT_SCOPES  # a [[peers]] rule must list it


def test_send_to_another_node_is_committed_to_the_outbox_and_taken_by_the_relay() -> None:
    h = _h2(node="h1")
    alice = h.register("alice")
    res = alice.ok("send", {"to": "bob@h2", "content": "hello", "data": {"k": 1}})
    assert res["to"] == "bob@h2" and res["status"] == "queued"
    relay = h.connect()
    got = relay.ok("relay_take", {"max": 10})["messages"]
    assert [(m["id"], m["from"], m["to"], m["content"]) for m in got] == [(res["id"], "alice", "bob@h2", "hello")]
    assert relay.ok("relay_take", {})["messages"] == []  # leased
    assert relay.ok("relay_ack", {"ids": [res["id"]]}) == {"acked": 1}
    h.clock.advance(3600)
    h.broker.tick()
    assert relay.ok("relay_take", {})["messages"] == []  # acked: gone


def test_an_outbox_lease_that_runs_out_is_taken_again() -> None:
    h = _h2(node="h1")
    h.register("alice").ok("send", {"to": "bob@h2", "content": "x"})
    relay = h.connect()
    first = relay.ok("relay_take", {})["messages"]
    h.clock.advance(h.broker.config.lease_s + 1)
    h.broker.tick()
    assert [m["id"] for m in relay.ok("relay_take", {})["messages"]] == [first[0]["id"]]


def test_a_bare_name_and_this_node_stay_local() -> None:
    h = _h2(node="h1")
    alice, bob = h.register("alice"), h.register("bob")
    alice.ok("send", {"to": "bob@h1", "content": "local"})
    alice.ok("send", {"to": "bob", "content": "bare"})
    assert [m["content"] for m in bob.receive()] == ["local", "bare"]
    assert h.connect().ok("relay_take", {})["messages"] == []


def test_without_a_node_name_a_remote_address_is_refused() -> None:
    h = _h2(node=None)
    err = h.register("alice").err("send", {"to": "bob@h2", "content": "x"})
    assert err["data"]["reason"] == "federation_off"


def test_a_peer_without_remote_send_cannot_send_off_host() -> None:
    rule = PeerRule("plain", uids=frozenset({OTHER_UID}), scopes=DEFAULT_SCOPES)
    h = Harness(BrokerConfig(node="h1"), policy=RulePolicy([rule]))
    carol = h.register("carol", uid=OTHER_UID)
    err = carol.err("send", {"to": "bob@h2", "content": "x"})
    assert err["code"] == -32002 and err["data"]["reason"] == "scope_missing"
    assert h.audit.named("scope_denied")[-1]["scope"] == SCOPE_REMOTE_SEND
    assert carol.ok("send", {"to": "dave", "content": "local is fine"})["status"] == "queued"


def test_relay_methods_need_the_relay_scope() -> None:
    rule = PeerRule("plain", uids=frozenset({OTHER_UID}), scopes=DEFAULT_SCOPES | {SCOPE_REMOTE_SEND})
    h = Harness(BrokerConfig(node="h2"), policy=RulePolicy([rule]))
    intruder = h.connect(OTHER_UID)
    for method, params in [("relay_take", {}), ("relay_ack", {"ids": []})]:
        assert intruder.err(method, params)["data"]["reason"] == "scope_missing"
    assert _deliver(intruder)["error"]["data"]["reason"] == "scope_missing"


def test_a_remote_message_is_delivered_once_with_a_remote_sender() -> None:
    h = _h2()
    bob, relay = h.register("bob"), h.connect()
    first = _deliver(relay)["result"]
    assert first["status"] == "delivered"
    assert _deliver(relay)["result"] == {"status": "duplicate", "id": first["id"], "reason": ""}
    got = bob.receive()
    assert [(m["from"], m["to"], m["content"]) for m in got] == [("alice@h1", "bob", "hi")]
    # bob's reply to alice@h1 goes to the outbox
    assert bob.ok("send", {"to": got[0]["from"], "content": "re"})["to"] == "alice@h1"
    assert [m["to"] for m in relay.ok("relay_take", {})["messages"]] == ["alice@h1"]


def test_a_remote_message_cannot_claim_a_local_identity() -> None:
    h = _h2()
    bob, relay = h.register("bob"), h.connect()
    h.register("carol")
    out = _deliver(relay, node="h2", **{"from": "carol"})["result"]
    assert out["status"] == "refused" and out["reason"] == "remote_claims_local_node"
    # a payload that names a local sender is still shown as remote
    assert _deliver(relay, id="m2", data={"from": "carol", "from_id": "carol"})["result"]["status"] == "delivered"
    (msg,) = bob.receive()
    assert msg["from"] == "alice@h1"
    assert h.audit.named("remote_refused")[0]["reason"] == "remote_claims_local_node"


def test_a_node_not_in_remote_gets_an_audited_bounce() -> None:
    h = _h2(RemoteRules(()))
    h.register("bob")
    relay = h.connect()
    out = _deliver(relay)["result"]
    assert out == {"status": "bounced", "id": "", "reason": "remote_not_allowed"}
    (bounce,) = relay.ok("relay_take", {})["messages"]
    assert bounce["from"] == "postmaster" and bounce["to"] == "alice@h1"
    assert bounce["data"]["bounce"] == {"id": "m1", "to": "bob@h2", "reason": "remote_not_allowed"}
    assert h.audit.named("remote_refused")[0]["node"] == "h1"
    assert _deliver(relay)["result"]["status"] == "duplicate"  # a redelivery is not bounced twice
    assert relay.ok("relay_take", {})["messages"] == []


@pytest.mark.parametrize("to", ["ci-7", "bob"])
def test_remote_rules_match_node_and_name_patterns(to: str) -> None:
    h = _h2()
    relay = h.connect()
    assert _deliver(relay, to=to)["result"]["status"] == "delivered"
    assert _deliver(relay, id="m9", to="mallory")["result"]["reason"] == "remote_not_allowed"
    assert _deliver(relay, id="m8", node="h3", to=to)["result"]["reason"] == "remote_not_allowed"


def test_a_refused_bounce_is_not_bounced_again() -> None:
    h = _h2(RemoteRules(()))
    relay = h.connect()
    out = _deliver(relay, **{"from": "postmaster", "bounce": True})["result"]
    assert out["status"] == "refused"
    assert relay.ok("relay_take", {})["messages"] == []
