"""Property tests: ``Broker.handle_frame`` is total and always answers with a well-formed frame.

Whatever a peer sends, the broker never raises, never reports an internal error (-32603, which
means a bug), and answers every request with exactly one JSON-RPC response line. Only
notifications (requests without an ``id``) go unanswered.
"""

from __future__ import annotations

import json
from typing import Any

from core_harness import Harness
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parrot_ipc.core import BrokerConfig, WaitForMail
from parrot_ipc.core.broker import METHODS

VALID_CODES = {-32700, -32600, -32601, -32602, -32001, -32002, -32003, -32004, -32005, -32006, -32007}
# 4,000 + 4,000 + 2,000 = 10,000 examples a run (the hostile-input issue's floor for CI).
PROPERTY_SETTINGS = settings(
    max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
_ABSENT: Any = object()

# Field names the methods know, so that generated params often get past "unknown field".
KNOWN_FIELDS = [
    "instance_id", "shared_secret_proof", "token", "to", "content", "data", "idempotency_key",
    "from", "from_id", "max", "wait_s", "ids", "new_id", "name",
]
NAMES = st.sampled_from(["a", "b", "me", "other", "x" * 64, "../etc/passwd", "", "b.c_d-e", "caf\u00e9"])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | NAMES
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
param_dicts = st.dictionaries(
    st.sampled_from(KNOWN_FIELDS) | st.text(max_size=10), json_values, max_size=5
)
junk_methods = st.sampled_from(["", "ping ", "PING", "rpc.discover", "get_resource", "ping; rm -rf /"]) | st.text(
    max_size=12
)
# A valid params object per method, for the generator to mutate.
VALID_PARAMS: dict[str, dict[str, Any]] = {
    "get_token": {"instance_id": "me"},
    "authenticate": {"token": "A" * 43},
    "send": {"to": "other", "content": "hi", "data": {"k": 1}, "idempotency_key": "k"},
    "broadcast": {"content": "all"},
    "receive": {"max": 2, "wait_s": 0},
    "ack": {"ids": []},
    "rename": {"new_id": "me2"},
}


@st.composite
def method_and_params(draw: st.DrawFn) -> tuple[str, Any]:
    """A method (mostly real ones) and params: absent, any JSON value, or a valid set mutated."""
    method = draw(junk_methods if draw(st.integers(0, 4)) == 0 else st.sampled_from(METHODS))
    kind = draw(st.sampled_from(["mutated", "mutated", "dict", "absent", "any"]))
    if kind == "absent":
        return method, _ABSENT
    if kind == "any":
        return method, draw(json_values)
    if kind == "dict":
        return method, draw(param_dicts)
    params = dict(VALID_PARAMS.get(method, {}))
    for key in draw(st.lists(st.sampled_from(sorted(params)), max_size=1)) if params else []:
        del params[key]
    params.update(draw(st.dictionaries(st.sampled_from(KNOWN_FIELDS), json_values, max_size=1)))
    return method, params


request_ids = st.integers() | st.text(max_size=10) | st.none() | st.just(_ABSENT)


def check_response(out: Any, *, expect_id: Any = _ABSENT) -> dict[str, Any]:
    """``out`` is one JSON-RPC response line: a result, or an error with a valid code and reason."""
    assert isinstance(out, bytes), out
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    resp = json.loads(out)
    assert isinstance(resp, dict) and resp["jsonrpc"] == "2.0"
    assert "id" in resp
    if expect_id is not _ABSENT:
        assert resp["id"] == expect_id
    assert ("result" in resp) != ("error" in resp), resp
    if "error" in resp:
        error = resp["error"]
        assert error["code"] in VALID_CODES, error
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["data"]["reason"], str) and error["data"]["reason"]
    return resp


def fresh_authenticated() -> tuple[Harness, Any]:
    h = Harness(BrokerConfig(max_mailbox_messages=3, rename_interval_s=0))
    me = h.register("me")
    h.register("other").ok("send", {"to": "me", "content": "queued for me"})
    return h, me


@PROPERTY_SETTINGS
@given(frame=st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_and_get_one_response(frame: bytes) -> None:
    h = Harness()
    peer = h.connect()
    out = peer.send_frame(frame)
    if out is None:
        # Only a JSON-RPC notification, or a batch of only notifications, may go unanswered.
        obj = json.loads(frame)
        members = obj if isinstance(obj, list) and obj else [obj]
        assert all(isinstance(m, dict) and "id" not in m for m in members)
        return
    if out.startswith(b"["):  # a batch's reply: one response object per member owed one
        assert out.endswith(b"]\n") and out.count(b"\n") == 1
        replies = json.loads(out)
        assert isinstance(json.loads(frame), list) and 0 < len(replies) <= len(json.loads(frame))
        for reply in replies:
            check_response(json.dumps(reply).encode() + b"\n")
        return
    check_response(out)


@PROPERTY_SETTINGS
@given(call=method_and_params(), rid=request_ids, ascii_only=st.booleans())
def test_valid_envelopes_with_mutated_params_never_raise(
    call: tuple[str, Any], rid: Any, ascii_only: bool
) -> None:
    method, params = call
    h, me = fresh_authenticated()
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if rid is not _ABSENT:
        req["id"] = rid
    if params is not _ABSENT:
        req["params"] = params
    frame = json.dumps(req, ensure_ascii=ascii_only).encode()
    out = me.send_frame(frame)
    if rid is _ABSENT:
        assert out is None
        return
    if isinstance(out, WaitForMail):
        assert method == "receive"
        assert out.request_id == rid
        out = h.broker.poll_receive(me.conn, out, final=True)
    check_response(out, expect_id=rid)
    # The connection stays usable after whatever happened.
    check_response(me.send_frame(b'{"jsonrpc":"2.0","id":"after","method":"ping"}'), expect_id="after")


@settings(PROPERTY_SETTINGS, max_examples=2000)
@given(
    method=st.sampled_from(METHODS),
    params=param_dicts,
    garbage=st.binary(min_size=1, max_size=4),
    at=st.integers(min_value=0),
)
def test_valid_requests_with_corrupted_bytes_never_raise(
    method: str, params: dict[str, Any], garbage: bytes, at: int
) -> None:
    h, me = fresh_authenticated()
    frame = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    at %= len(frame) + 1
    out = me.send_frame(frame[:at] + garbage + frame[at:])
    if isinstance(out, WaitForMail):
        out = h.broker.poll_receive(me.conn, out, final=True)
    if out is not None:
        check_response(out)
