"""The JSON-RPC 2.0 specification's own examples (section 7), over a real AF_UNIX socket.

Source: https://www.jsonrpc.org/specification, section 7 "Examples". The broker has no
``subtract``, ``sum``, ``update``, ``get_data`` or ``foo.get``, so (issue 16):

- a call the spec answers with a *result* calls ``ping`` instead (its result is ``"pong"``), with
  the spec's id; ``ping`` takes no params, so ``sum``'s and ``subtract``'s params are dropped;
- the spec's positional and named params sent as they are get -32602 (JSON-RPC 2.0 section
  4.2 lets a server take params by name only; ``docs/protocol.md``: params is an object);
- methods the spec expects to be missing (``foobar``, ``foo.get``) and notifications
  (``update``, ``notify_hello``, ``notify_sum``) keep their names: the broker has none of them.

What the spec's shapes require is kept: which members a response has, the error codes, the id
(null where the spec says so), an array for a batch (in any order), a single object for ``[]``
and for a batch that is not JSON, and nothing at all for notifications. "Nothing" is checked
by sending a sentinel ``ping`` after the example: the first line back must be the sentinel's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from shell_harness import Harness, raw

SENTINEL = b'{"jsonrpc":"2.0","id":"sentinel","method":"ping"}\n'


def R(rid: Any, result: Any = "pong") -> dict[str, Any]:
    """A success response the spec requires: members jsonrpc, id, result."""
    return {"id": rid, "result": result}


def E(rid: Any, code: int) -> dict[str, Any]:
    """An error response the spec requires: members jsonrpc, id, error{code, message}."""
    return {"id": rid, "error": code}


# (spec example, frames sent as one line each, expected replies: one per line, a list for an array)
EXAMPLES = [
    pytest.param([b'{"jsonrpc": "2.0", "method": "ping", "params": [42, 23], "id": 1}',
                  b'{"jsonrpc": "2.0", "method": "ping", "params": [23, 42], "id": 2}'],
                 [E(1, -32602), E(2, -32602)], id="positional-params-as-sent"),
    pytest.param([b'{"jsonrpc": "2.0", "method": "ping", "id": 1}', b'{"jsonrpc": "2.0", "method": "ping", "id": 2}'],
                 [R(1), R(2)], id="positional-params-adapted"),
    pytest.param([b'{"jsonrpc": "2.0", "method": "ping", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
                  b'{"jsonrpc": "2.0", "method": "ping", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}'],
                 [E(3, -32602), E(4, -32602)], id="named-params-as-sent"),
    pytest.param([b'{"jsonrpc": "2.0", "method": "ping", "params": {}, "id": 3}',
                  b'{"jsonrpc": "2.0", "method": "ping", "params": {}, "id": 4}'],
                 [R(3), R(4)], id="named-params-adapted"),
    pytest.param([b'{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}',
                  b'{"jsonrpc": "2.0", "method": "foobar"}'],
                 [], id="notification"),
    pytest.param([b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}'], [E("1", -32601)],
                 id="non-existent-method"),
    pytest.param([b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'], [E(None, -32700)],
                 id="invalid-json"),
    pytest.param([b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}'], [E(None, -32600)],
                 id="invalid-request-object"),
    pytest.param([b'[ {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, {"jsonrpc": "2.0", "method" ]'],
                 [E(None, -32700)], id="batch-invalid-json"),
    pytest.param([b"[]"], [E(None, -32600)], id="empty-array"),
    pytest.param([b"[1]"], [[E(None, -32600)]], id="invalid-batch-not-empty"),
    pytest.param([b"[1,2,3]"], [[E(None, -32600), E(None, -32600), E(None, -32600)]], id="invalid-batch"),
    pytest.param([b'[ {"jsonrpc": "2.0", "method": "ping", "id": "1"},'
                  b' {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
                  b' {"jsonrpc": "2.0", "method": "ping", "id": "2"},'
                  b' {"foo": "boo"},'
                  b' {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
                  b' {"jsonrpc": "2.0", "method": "ping", "id": "9"} ]'],
                 [[R("1"), R("2"), E(None, -32600), E("5", -32601), R("9")]], id="batch"),
    pytest.param([b'[ {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
                  b' {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]} ]'],
                 [], id="batch-all-notifications"),
]


def shape(resp: Any) -> Any:
    """The parts of a response the spec fixes: its members, id, and result or error code."""
    if isinstance(resp, list):
        assert resp, "the spec never answers with an empty array"
        return sorted((shape(r) for r in resp), key=json.dumps)  # any order (section 6)
    assert isinstance(resp, dict) and resp["jsonrpc"] == "2.0", resp
    if "error" in resp:
        assert set(resp) == {"jsonrpc", "id", "error"}, resp
        assert isinstance(resp["error"]["message"], str) and isinstance(resp["error"]["code"], int)
        return {"id": resp["id"], "error": resp["error"]["code"]}
    assert set(resp) == {"jsonrpc", "id", "result"}, resp
    return {"id": resp["id"], "result": resp["result"]}


@pytest.mark.parametrize(("frames", "expected"), EXAMPLES)
async def test_jsonrpc_spec_section_7_example(harness: Harness, frames: list[bytes], expected: list[Any]) -> None:
    stream = await raw(harness.path)
    await stream.send_all(b"".join(f + b"\n" for f in frames) + SENTINEL)
    buf, replies = b"", []
    with trio.fail_after(5):
        while True:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed after {buf!r}"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            replies += [json.loads(line) for line in lines]
            if replies and replies[-1] == {"jsonrpc": "2.0", "id": "sentinel", "result": "pong"}:
                break
    got = [shape(r) for r in replies[:-1]]
    want = [sorted(e, key=json.dumps) if isinstance(e, list) else e for e in expected]
    assert got == want
    await stream.aclose()
