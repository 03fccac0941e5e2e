"""Per-UID rate limit (token bucket) and per-UID connection cap, in the core."""

from __future__ import annotations

import json

from core_harness import BROKER_UID, Harness, decode

from parrot_ipc.core import BrokerConfig, Connection, PeerCredentials
from parrot_ipc.core.broker import TokenBucket

RATE_LIMITED = -32003


def _ping_results(peer, n: int) -> list[dict]:
    return [peer.call("ping") for _ in range(n)]


def test_token_bucket_spends_refills_and_caps_at_burst() -> None:
    b = TokenBucket(rate_per_s=10.0, burst=3.0, now=100.0)
    assert [b.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = b.take(100.0)
    assert 0.09 < wait <= 0.1  # one token comes back after 1/rate s
    assert b.take(100.15) == 0.0
    assert b.take(200.0) == 0.0 and b.tokens == 2.0  # a long pause banks no more than burst


def test_token_bucket_ignores_a_clock_step_back() -> None:
    b = TokenBucket(rate_per_s=10.0, burst=1.0, now=100.0)
    assert b.take(100.0) == 0.0
    assert b.take(50.0) > 0  # no tokens from a negative interval


def test_frames_over_the_burst_get_32003_with_retry_after(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(rate_per_s=5, burst=3))
    peer = h.connect()
    results = _ping_results(peer, 5)
    assert [("result" in r) for r in results] == [True, True, True, False, False]
    err = results[3]["error"]
    assert err["code"] == RATE_LIMITED and err["data"]["reason"] == "rate_limited"
    assert 0 < err["data"]["retry_after_s"] <= 0.2
    assert results[3]["id"] == 4  # the request id is kept
    h.clock.advance(err["data"]["retry_after_s"])
    assert peer.call("ping")["result"] == "pong"


def test_rate_limit_is_audited_once_per_stretch(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(rate_per_s=1, burst=1))
    peer = h.connect()
    _ping_results(peer, 10)
    assert len(h.audit.named("rate_limited")) == 1
    h.clock.advance(5)
    _ping_results(peer, 3)
    assert len(h.audit.named("rate_limited")) == 2


def test_the_bucket_is_per_uid_shared_by_its_connections_and_fair_to_others(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(rate_per_s=1, burst=2))
    a1, a2 = h.connect(BROKER_UID), h.connect(BROKER_UID)
    root = h.connect(0)
    assert "result" in a1.call("ping") and "result" in a2.call("ping")
    assert a1.call("ping")["error"]["code"] == RATE_LIMITED  # a2 spent a1's shared budget
    assert [("result" in r) for r in _ping_results(root, 2)] == [True, True]  # another uid: its own


def test_rate_limited_garbage_and_notifications(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(rate_per_s=1, burst=1))
    peer = h.connect()
    assert "result" in peer.call("ping")
    out = decode(peer.send_frame(b"\xff not json"))
    assert out["id"] is None and out["error"]["code"] == RATE_LIMITED
    assert peer.send_frame(json.dumps({"jsonrpc": "2.0", "method": "ping"}).encode()) is None


def test_connections_per_uid_are_capped_and_closing_frees_a_slot(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(max_connections_per_uid=2))
    first, _second = h.connect(), h.connect()
    refused = h.broker.accept(PeerCredentials(999, BROKER_UID, BROKER_UID))
    assert isinstance(refused, bytes)
    err = decode(refused)["error"]
    assert err["code"] == RATE_LIMITED and err["data"]["reason"] == "too_many_connections"
    assert isinstance(h.broker.accept(PeerCredentials(998, 0, 0)), Connection)  # root is another uid
    refusal = [f for f in h.audit.named("peer_refused") if f["reason"] == "too_many_connections"]
    assert refusal and refusal[0]["uid"] == BROKER_UID
    h.broker.close(first.conn)
    assert isinstance(h.broker.accept(PeerCredentials(997, BROKER_UID, BROKER_UID)), Connection)
