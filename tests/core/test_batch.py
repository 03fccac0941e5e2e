"""JSON-RPC 2.0 batches (section 6), parse errors of truncated frames, and number ids (issue 16).

The rules are in ``docs/protocol.md`` ("Batches", "Ids", "Parse errors"); the spec's own
examples run over a real socket in ``tests/shell/test_jsonrpc_spec.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from core_harness import Harness, Peer, decode
from hypothesis import given, settings
from hypothesis import strategies as st

from parrot_ipc.core import BrokerConfig
from parrot_ipc.core.batch import BatchReply
from parrot_ipc.core.effects import WaitForMail

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
RATE_LIMITED = -32003


def ping(rid: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "ping"}


def note(method: str = "ping") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method}


def batch(peer: Peer, members: list[Any]) -> Any:
    """Send ``members`` as one batch frame; the decoded array reply, or None for no frame."""
    out = peer.send_frame(json.dumps(members).encode())
    if out is None:
        return None
    assert isinstance(out, bytes) and out.endswith(b"\n") and out.count(b"\n") == 1, out
    return json.loads(out)


@pytest.fixture
def peer(harness: Harness) -> Peer:
    return harness.connect()


# --------------------------------------------------------------------------- shapes
def test_a_batch_gets_an_array_with_one_response_per_member_that_has_an_id(peer: Peer) -> None:
    out = peer.send_frame(json.dumps([ping(1), note(), ping("b"), {"jsonrpc": "2.0", "id": 3, "method": "nope"}])
                          .encode())
    assert isinstance(out, BatchReply) and out.responses == 3
    got = json.loads(out)
    assert got == [{"jsonrpc": "2.0", "id": 1, "result": "pong"}, {"jsonrpc": "2.0", "id": "b", "result": "pong"},
                   {"jsonrpc": "2.0", "id": 3, "error": {"code": METHOD_NOT_FOUND, "message": "Method not found.",
                                                         "data": {"reason": "method_not_found"}}}]


def test_a_batch_of_only_notifications_gets_nothing_at_all(harness: Harness) -> None:
    alice, bob = harness.register("a"), harness.register("b")
    assert batch(alice, [{"jsonrpc": "2.0", "method": "send", "params": {"to": "b", "content": "one"}},
                         note("no_such_method"), note()]) is None
    assert [m["content"] for m in bob.receive()] == ["one"]  # the notifications were carried out


def test_an_empty_batch_gets_one_invalid_request_object(harness: Harness, peer: Peer) -> None:
    resp = decode(peer.send_frame(b"[]"))
    assert resp["id"] is None and resp["error"]["code"] == INVALID_REQUEST
    assert "empty batch" in resp["error"]["message"]
    assert harness.audit.named("bad_request")[0]["code"] == INVALID_REQUEST


def test_members_that_are_not_request_objects_get_one_invalid_request_each(peer: Peer) -> None:
    got = batch(peer, [1, 2, 3])
    assert [(r["id"], r["error"]["code"]) for r in got] == [(None, INVALID_REQUEST)] * 3


def test_a_batch_inside_a_batch_is_an_invalid_member(peer: Peer) -> None:
    got = batch(peer, [[ping(1)], ping(2)])
    assert [(r["id"], r.get("error", {}).get("code")) for r in got] == [(None, INVALID_REQUEST), (2, None)]


def test_a_batch_that_is_not_valid_json_gets_one_parse_error(peer: Peer) -> None:
    resp = decode(peer.send_frame(b'[{"jsonrpc":"2.0","method":"ping","id":"1"},{"jsonrpc":"2.0","method"]'))
    assert resp["id"] is None and resp["error"]["code"] == PARSE_ERROR


def test_a_batch_with_invalid_utf8_gets_one_parse_error(peer: Peer) -> None:
    resp = decode(peer.send_frame(b'[{"jsonrpc":"2.0","method":"p\xffing","id":1}]'))
    assert resp["id"] is None and resp["error"]["code"] == PARSE_ERROR


def test_positional_params_in_a_batch_are_invalid_params(peer: Peer) -> None:
    got = batch(peer, [{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [42, 23]}])
    assert [(r["id"], r["error"]["code"]) for r in got] == [(1, INVALID_PARAMS)]


# --------------------------------------------------------------------------- limits
def test_a_batch_longer_than_max_batch_length_gets_one_invalid_request_with_a_reason() -> None:
    peer = Harness(BrokerConfig(max_batch_length=3)).connect()
    assert len(batch(peer, [ping(i) for i in range(3)])) == 3
    resp = decode(peer.send_frame(json.dumps([ping(i) for i in range(4)]).encode()))
    assert resp["id"] is None and resp["error"]["code"] == INVALID_REQUEST
    assert resp["error"]["data"] == {"reason": "batch_too_long", "max_batch_length": 3}


def test_max_batch_length_defaults_to_100() -> None:
    assert BrokerConfig().max_batch_length == 100
    peer = Harness().connect()
    assert len(batch(peer, [ping(i) for i in range(100)])) == 100
    assert decode(peer.send_frame(json.dumps([ping(i) for i in range(101)]).encode()))["id"] is None


def test_a_batch_takes_one_rate_limit_token_per_member() -> None:
    h = Harness(BrokerConfig(rate_per_s=0.001, burst=3))
    peer = h.connect()
    got = batch(peer, [ping(1), ping(2), note(), ping(4), ping(5)])
    # Three tokens: two pings and the notification; the last two members are rate limited.
    assert [(r["id"], r.get("result"), r.get("error", {}).get("code")) for r in got] == [
        (1, "pong", None), (2, "pong", None), (4, None, RATE_LIMITED), (5, None, RATE_LIMITED)]
    assert decode(peer.send_frame(json.dumps(ping(6)).encode()))["error"]["code"] == RATE_LIMITED


def test_empty_batches_take_a_token_each() -> None:
    peer = Harness(BrokerConfig(rate_per_s=0.001, burst=2)).connect()
    codes = [decode(peer.send_frame(b"[]"))["error"]["code"] for _ in range(3)]
    assert codes == [INVALID_REQUEST, INVALID_REQUEST, RATE_LIMITED]


def test_a_long_poll_inside_a_batch_is_answered_at_once(harness: Harness) -> None:
    alice, bob = harness.register("a"), harness.register("b")
    poll = {"jsonrpc": "2.0", "id": 7, "method": "receive", "params": {"wait_s": 30}}
    alone = alice.send_frame(json.dumps(poll).encode())
    assert isinstance(alone, WaitForMail)  # a single long poll waits (the shell holds it)
    got = batch(alice, [poll, ping(8)])  # inside a batch it is answered as if wait_s were 0
    assert got == [{"jsonrpc": "2.0", "id": 7, "result": {"messages": []}}, {"jsonrpc": "2.0", "id": 8, "result": "pong"}]
    bob.ok("send", {"to": "a", "content": "hi"})
    (reply,) = batch(alice, [poll])
    assert [m["content"] for m in reply["result"]["messages"]] == ["hi"]


# --------------------------------------------------------------------------- parse errors
# Truncated frames with a wrongly typed member: tests/core/test_envelope.py, -32700 cases.
def test_valid_json_that_is_not_a_request_is_still_invalid_request(peer: Peer) -> None:
    resp = decode(peer.send_frame(b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}'))
    assert resp["id"] is None and resp["error"]["code"] == INVALID_REQUEST


# --------------------------------------------------------------------------- number ids
@pytest.mark.parametrize("text", [b"1.5", b"1.50", b"-0.25", b"1E2", b"2.5e-3", b"-0.0", b"1e308"])
def test_a_number_id_is_echoed_back_exactly(peer: Peer, text: bytes) -> None:
    ok = peer.send_frame(b'{"jsonrpc":"2.0","id":' + text + b',"method":"ping"}')
    assert ok == b'{"jsonrpc":"2.0","id":' + text + b',"result":"pong"}\n'
    err = peer.send_frame(b'{"jsonrpc":"2.0","id":' + text + b',"method":"nope"}')
    assert err.startswith(b'{"jsonrpc":"2.0","id":' + text + b',"error":{"code":-32601')
    bad = peer.send_frame(b'{"jsonrpc":"2.0","id":' + text + b',"method":5}')  # the id salvaged
    assert bad.startswith(b'{"jsonrpc":"2.0","id":' + text + b',"error":{"code":-32600')
    (in_batch,) = batch(peer, [json.loads(b'{"jsonrpc":"2.0","id":' + text + b',"method":"ping"}')])
    assert in_batch["id"] == json.loads(text)


def test_a_number_id_outside_the_double_range_is_invalid_request(peer: Peer) -> None:
    resp = decode(peer.send_frame(b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}'))
    assert resp["id"] is None and resp["error"]["code"] == INVALID_REQUEST


def test_a_rate_limited_float_id_is_echoed_exactly() -> None:
    peer = Harness(BrokerConfig(rate_per_s=0.001, burst=1)).connect()
    peer.send_frame(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    out = peer.send_frame(b'{"jsonrpc":"2.0","id":2.50,"method":"ping"}')
    assert out.startswith(b'{"jsonrpc":"2.0","id":2.50,"error":{"code":-32003')


def test_a_failed_commit_answers_every_member_owed_a_response() -> None:
    from parrot_ipc.shell.connection import store_failed

    frame = json.dumps([ping(1), note(), {"jsonrpc": "2.0", "id": 2.5, "method": "send"}, 7]).encode()
    got = json.loads(store_failed(frame))
    assert [(r["id"], r["error"]["code"], r["error"]["data"]["reason"]) for r in got] == [
        (1, -32603, "store_write_failed"), (2.5, -32603, "store_write_failed"), (None, -32603, "store_write_failed")]
    assert store_failed(json.dumps([note()]).encode()) == b""
    single = json.loads(store_failed(json.dumps(ping(9)).encode()))
    assert single["id"] == 9 and single["error"]["code"] == -32603


_ids = st.one_of(st.integers(-(2**63), 2**63), st.text(max_size=8), st.none(),
                 st.floats(allow_nan=False, allow_infinity=False))
_members = st.one_of(
    st.builds(lambda rid: ping(rid), _ids),  # a call: answered
    st.just(note()), st.just(note("nope")),  # notifications: nothing
    st.builds(lambda rid: {"jsonrpc": "2.0", "id": rid, "method": "nope"}, _ids),  # -32601
    st.one_of(st.integers(), st.text(max_size=4), st.just({"foo": "boo"}), st.just([])),  # -32600, id null
)


@settings(max_examples=300, deadline=None, database=None)
@given(members=st.lists(_members, min_size=1, max_size=12))
def test_any_batch_gets_one_response_per_member_owed_one_in_member_order(members: list[Any]) -> None:
    peer = Harness().connect()
    got = batch(peer, members)
    owed = [m for m in members if not (isinstance(m, dict) and "jsonrpc" in m and "id" not in m)]
    if not owed:
        assert got is None
        return
    assert len(got) == len(owed)
    for member, reply in zip(owed, got, strict=True):
        assert reply["jsonrpc"] == "2.0"
        if isinstance(member, dict) and member.get("method") == "ping":
            assert reply["result"] == "pong" and reply["id"] == member["id"]
        elif isinstance(member, dict) and member.get("method") == "nope":
            assert reply["error"]["code"] == METHOD_NOT_FOUND and reply["id"] == member["id"]
        else:
            assert reply["error"]["code"] == INVALID_REQUEST and reply["id"] is None
