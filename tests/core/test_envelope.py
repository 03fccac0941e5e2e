"""The JSON-RPC 2.0 envelope: parse errors, invalid requests, unknown methods, bad params, ids."""

from __future__ import annotations

import json
from typing import Any

import pytest
from core_harness import Harness, Peer, decode

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602


@pytest.fixture
def peer(harness: Harness) -> Peer:
    return harness.connect()


def error_of(out: Any) -> tuple[Any, dict[str, Any]]:
    """The ``(id, error)`` of an error response frame; every error carries ``data.reason``."""
    resp = decode(out)
    assert "result" not in resp, resp
    error = resp["error"]
    assert isinstance(error["code"], int) and isinstance(error["message"], str) and error["message"]
    assert isinstance(error["data"]["reason"], str) and error["data"]["reason"]
    return resp["id"], error


# --------------------------------------------------------------------------- -32700
@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"{", id="truncated"),
        pytest.param(b"not json", id="bare-words"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping",}', id="trailing-comma"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping"} {}', id="two-values"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"p\xffing"}', id="invalid-utf8"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"\xc3\x28"}', id="bad-utf8-sequence"),
        pytest.param(b'{"jsonrpc":"2.0","id":"\xff","method":"ping"}', id="invalid-utf8-in-id"),
        pytest.param(b'{"jsonrpc":"1.0","id":"\xff","method":"ping"}', id="invalid-utf8-in-id-of-bad-request"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\xff"}}', id="invalid-utf8-in-params"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\xff":1}}', id="invalid-utf8-in-params-key"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","zz":"\xff"}', id="invalid-utf8-in-unknown-member"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","s":"\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping\x00"}', id="raw-nul-in-string"),
        pytest.param(b'{"jsonrpc":"2.0",\x00"id":1,"method":"ping"}', id="raw-nul-between-members"),
        pytest.param(b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}', id="lone-surrogate-escape"),
        # Invalid JSON is -32700 even when a member before the fault has a wrong type (issue 16).
        pytest.param(b'{"jsonrpc":"2.0","method":1,"id":', id="issue-16-truncated-with-bad-method"),
        pytest.param(b'{"jsonrpc":"2.0","method":1,"id":1', id="unclosed-object-with-bad-method"),
        pytest.param(b'{"jsonrpc":"1.0","id":1,"method":"ping"', id="wrong-version-then-truncated"),
        pytest.param(b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]', id="spec-7-invalid-json"),
        pytest.param(b'{"id":true,"method":"ping",}', id="bad-id-then-trailing-comma"),
    ],
)
def test_unparseable_frames_get_parse_error_with_null_id(peer: Peer, frame: bytes) -> None:
    rid, error = error_of(peer.send_frame(frame))
    assert rid is None
    assert error["code"] == PARSE_ERROR
    assert error["data"]["reason"] == "parse_error"


def test_connection_still_works_after_a_parse_error(peer: Peer) -> None:
    error_of(peer.send_frame(b"garbage"))
    assert peer.ok("ping") == "pong"


@pytest.mark.parametrize("where", ["id", "params", "unknown-member", "params-field"])
def test_deeply_nested_json_is_refused_not_raised(peer: Peer, where: str) -> None:
    depth = 5000  # far past msgspec's recursion limit, and still only 10 KB
    nested = "[" * depth + "]" * depth
    body = {
        "id": f'{{"jsonrpc":"2.0","id":{nested},"method":"ping"}}',
        "params": f'{{"jsonrpc":"2.0","id":1,"method":"ping","params":{nested}}}',
        "unknown-member": f'{{"jsonrpc":"2.0","id":1,"method":"ping","extra":{nested}}}',
        "params-field": f'{{"jsonrpc":"2.0","id":1,"method":"send","params":{{"data":{{"x":{nested}}}}}}}',
    }[where]
    rid, error = error_of(peer.send_frame(body.encode()))
    assert error["code"] in (PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS)
    assert rid in (None, 1)


# --------------------------------------------------------------------------- -32600
@pytest.mark.parametrize(
    ("obj", "expected_id"),
    [
        pytest.param([], None, id="empty-batch"),
        pytest.param("ping", None, id="json-string"),
        pytest.param(42, None, id="json-number"),
        pytest.param(None, None, id="json-null"),
        pytest.param({"jsonrpc": "1.0", "id": 7, "method": "ping"}, 7, id="wrong-version"),
        pytest.param({"jsonrpc": 2.0, "id": 8, "method": "ping"}, 8, id="version-as-number"),
        pytest.param({"id": 9, "method": "ping"}, 9, id="missing-version"),
        pytest.param({"jsonrpc": "2.0", "id": "abc"}, "abc", id="missing-method"),
        pytest.param({"jsonrpc": "2.0", "id": 10, "method": 5}, 10, id="method-not-a-string"),
        pytest.param({"jsonrpc": "2.0", "id": True, "method": "ping"}, None, id="bool-id"),
        pytest.param({"jsonrpc": "2.0", "id": [1], "method": "ping"}, None, id="array-id"),
        pytest.param({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}, None, id="object-id"),
        pytest.param({"jsonrpc": "2.0", "id": False, "method": 3}, None, id="bool-id-and-bad-method"),
    ],
)
def test_invalid_requests_get_invalid_request_and_a_salvaged_id(
    peer: Peer, obj: Any, expected_id: Any
) -> None:
    rid, error = error_of(peer.send_frame(json.dumps(obj).encode()))
    assert error["code"] == INVALID_REQUEST
    assert error["data"]["reason"] == "invalid_request"
    assert rid == expected_id and type(rid) is type(expected_id)


def test_invalid_request_is_audited(harness: Harness, peer: Peer) -> None:
    peer.send_frame(b"[]")
    (fields,) = harness.audit.named("bad_request")
    assert fields["code"] == INVALID_REQUEST and fields["uid"] == peer.uid


# --------------------------------------------------------------------------- -32601
@pytest.mark.parametrize(
    "method", ["ping; rm -rf /", "PING", "", "get_resource_", "_m_ping", "__init__", "send\n", "x" * 500]
)
def test_unknown_methods_get_method_not_found(peer: Peer, method: str) -> None:
    resp = peer.call(method)
    error = resp["error"]
    assert error["code"] == METHOD_NOT_FOUND
    assert error["data"]["reason"] == "method_not_found"


def test_method_not_found_audit_truncates_the_method_name(harness: Harness, peer: Peer) -> None:
    peer.call("z" * 500)
    (fields,) = harness.audit.named("bad_request")
    assert fields["code"] == METHOD_NOT_FOUND
    assert 0 < len(fields["method"]) <= 64


# --------------------------------------------------------------------------- -32602
@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"unexpected": 1}, id="unknown-field"),
        pytest.param([], id="array"),
        pytest.param([1, 2], id="positional"),
        pytest.param("x", id="string"),
        pytest.param(None, id="null"),
    ],
)
def test_ping_rejects_params_that_are_not_an_empty_object(peer: Peer, params: Any) -> None:
    frame = json.dumps({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": params}).encode()
    rid, error = error_of(peer.send_frame(frame))
    assert rid == 3
    assert error["code"] == INVALID_PARAMS


def test_ping_accepts_an_empty_params_object(peer: Peer) -> None:
    assert peer.ok("ping", {}) == "pong"


@pytest.mark.parametrize(
    "instance_id",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        ".hidden",
        "-dash-first",
        "_underscore-first",
        "a/b",
        "a b",
        "a\nb",
        "",
        "x" * 65,
        "caf\u00e9",
        "a\x00",
    ],
)
def test_get_token_rejects_bad_instance_ids(peer: Peer, instance_id: str) -> None:
    error = peer.err("get_token", {"instance_id": instance_id})
    assert error["code"] == INVALID_PARAMS
    assert peer.conn.session is None


@pytest.mark.parametrize("instance_id", ["a", "A9", "x" * 64, "agent-1.worker_2", "0"])
def test_get_token_accepts_good_instance_ids(peer: Peer, instance_id: str) -> None:
    assert peer.ok("get_token", {"instance_id": instance_id})["instance_id"] == instance_id


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="missing-instance-id"),
        pytest.param({"instance_id": 5}, id="instance-id-not-a-string"),
        pytest.param({"instance_id": "a", "scopes": ["admin"]}, id="unknown-field-asking-for-scopes"),
        pytest.param({"instance_id": "a", "uid": 0}, id="unknown-field-asking-for-uid"),
    ],
)
def test_get_token_rejects_missing_mistyped_and_unknown_params(peer: Peer, params: dict[str, Any]) -> None:
    assert peer.err("get_token", params)["code"] == INVALID_PARAMS
    assert peer.conn.session is None


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"to": "b", "content": "hi", "bogus": 1}, id="unknown-field"),
        pytest.param({"to": "../b", "content": "hi"}, id="bad-recipient"),
        pytest.param({"to": "b"}, id="missing-content"),
        pytest.param({"to": "b", "content": 5}, id="content-not-a-string"),
        pytest.param({"to": "b", "content": "hi", "data": [1]}, id="data-not-an-object"),
        pytest.param({"to": "b", "content": "hi", "idempotency_key": ""}, id="empty-idempotency-key"),
    ],
)
def test_send_rejects_bad_params_and_queues_nothing(harness: Harness, params: dict[str, Any]) -> None:
    alice, bob = harness.register("a"), harness.register("b")
    assert alice.err("send", params)["code"] == INVALID_PARAMS
    assert bob.receive() == []


@pytest.mark.parametrize(
    "params",
    [{"max": 0}, {"max": 1001}, {"wait_s": -1}, {"wait_s": 301}, {"max": "5"}, {"max": 1.5}],
)
def test_receive_rejects_out_of_range_params(harness: Harness, params: dict[str, Any]) -> None:
    assert harness.register("a").err("receive", params)["code"] == INVALID_PARAMS



@pytest.mark.parametrize(
    "number",
    [b"1" * 5000, b"-" + b"9" * 400, b"1e999999", b"-1e999999", b"18446744073709551616", b"1.5e308"],
    ids=["5000-digits", "400-digit-negative", "exponent-overflow", "negative-overflow", "2**64", "near-max-float"],
)
def test_huge_numbers_in_params_are_invalid_params_not_a_crash(harness: Harness, number: bytes) -> None:
    alice = harness.register("a")
    harness.register("b")
    frame = b'{"jsonrpc":"2.0","id":7,"method":"receive","params":{"max":' + number + b'}}'
    rid, error = error_of(alice.send_frame(frame))
    assert error["code"] in (INVALID_PARAMS, PARSE_ERROR), error  # never -32603
    assert rid in (7, None)
    assert alice.ok("ping") == "pong"  # the connection state is unchanged

def test_invalid_params_are_audited(harness: Harness, peer: Peer) -> None:
    peer.err("get_token", {"instance_id": "../../etc/passwd"})
    (fields,) = harness.audit.named("bad_request")
    assert fields["code"] == INVALID_PARAMS and fields["method"] == "get_token"


# --------------------------------------------------------------------------- ids
@pytest.mark.parametrize("rid", [0, -1, 2**40, 10**30, "", "req-1", "\u00fc\u00f1\u00ee", None])
def test_the_response_echoes_any_valid_id(peer: Peer, rid: Any) -> None:
    resp = peer.call("ping", rid=rid)
    assert resp["id"] == rid and type(resp["id"]) is type(rid)
    assert resp["result"] == "pong"


def test_error_responses_echo_the_id(peer: Peer) -> None:
    resp = peer.call("whoami", rid="w-1")
    assert resp["id"] == "w-1" and resp["error"]["code"] == -32001


# --------------------------------------------------------------------------- notifications
def test_notification_gets_no_response_but_takes_effect(harness: Harness) -> None:
    alice, bob = harness.register("a"), harness.register("b")
    alice.notify("send", {"to": "b", "content": "fire and forget"})
    (msg,) = bob.receive()
    assert msg["content"] == "fire and forget" and msg["from"] == "a"


def test_get_token_as_notification_binds_the_connection(harness: Harness) -> None:
    peer = harness.connect()
    peer.notify("get_token", {"instance_id": "quiet"})
    assert peer.ok("whoami")["instance_id"] == "quiet"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("no_such_method", None),
        ("whoami", None),  # unauthenticated
        ("get_token", {"instance_id": "../x"}),  # invalid params
        ("receive", {"wait_s": 5}),  # would wait
    ],
)
def test_notifications_never_get_a_response_even_for_errors(
    harness: Harness, method: str, params: dict[str, Any] | None
) -> None:
    peer = harness.connect() if method != "receive" else harness.register("r")
    peer.notify(method, params)


def test_every_error_response_has_a_reason() -> None:
    """A sweep across errors of every kind (the per-kind tests check each reason's value)."""
    harness = Harness()
    anon = harness.connect()
    frames = [
        b"{",
        b"[]",
        b'{"jsonrpc":"2.0","id":1,"method":"nope"}',
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1}}',
        b'{"jsonrpc":"2.0","id":1,"method":"whoami"}',
        b'{"jsonrpc":"2.0","id":1,"method":"authenticate","params":{"token":"bogus"}}',
    ]
    codes = {error_of(anon.send_frame(f))[1]["code"] for f in frames}
    assert codes == {PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, -32001}
