"""The Parrot IPC security guide's own clients, run verbatim against a real ``parrot-ipc serve``.

The clients are copied byte for byte into ``tests/e2e/seed_clients/`` (see its README); only
their ``SOCKET_PATH`` line is changed, to the test broker's socket. Their request is the
guide's ``ping`` and needs no mapping: ``ping`` exists. It lacks ``"jsonrpc": "2.0"``, so the
broker answers -32600 with a message that says so; one bash variant also sends a complete
JSON-RPC 2.0 request and gets ``"pong"``.

- The socat client ends its request with ``\\n`` (echo), then half-closes: it is answered at once.
- The Python client sends no ``\\n`` and waits: at ``handshake_timeout_s`` (1 s here) it gets one
  -32600 ``frame_not_terminated`` line, which it parses and prints. Before issue 16 it read an
  empty string after 10 s and died with a ``json.decoder.JSONDecodeError`` traceback.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "seed_clients"
# The guide sits in ``../shared/seeds/`` next to the project (issue 16), so look up the tree.
SEED_GLOBS = [str(d / "shared" / "seeds" / "002_*.txt") for d in Path(__file__).resolve().parents[2].parents]
GUIDE_PATH = "/run/parrot-mcp/mcp.sock"
RUN_TIMEOUT_S = 20.0


def _client(name: str, socket_path: str) -> str:
    """The guide's client ``name``, with only its socket path replaced."""
    code = (HERE / name).read_text()
    assert code.count(GUIDE_PATH) == 1
    return code.replace(GUIDE_PATH, socket_path)


@pytest.fixture
def serve(broker) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real broker (SQLite store) with ``handshake_timeout_s = 1``; yields its socket path."""
    cfg_dir = tempfile.mkdtemp(prefix="pipc-cfg-")
    cfg = Path(cfg_dir) / "parrot-ipc.toml"
    cfg.write_text("[server]\nhandshake_timeout_s = 1\n")
    cfg.chmod(0o600)
    try:
        yield broker(None, "--config", str(cfg)).socket_path
    finally:
        shutil.rmtree(cfg_dir, ignore_errors=True)


def test_the_copies_are_the_guides_code_verbatim() -> None:
    seeds = [f for pattern in SEED_GLOBS for f in glob.glob(pattern)]
    if not seeds:
        pytest.skip(f"the guide is not on this machine (looked for {SEED_GLOBS[0]} and up)")
    blocks = re.findall(r"```(\w+)\n(.*?)```", Path(seeds[0]).read_text(), re.S)
    assert (HERE / "mcp_client.py.txt").read_text() in [b for lang, b in blocks if lang == "python"]
    assert (HERE / "mcp_client.sh.txt").read_text() in [b for lang, b in blocks if lang == "bash"]


def test_the_guides_python_client_gets_a_frame_not_terminated_answer(serve: str) -> None:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", _client("mcp_client.py.txt", serve)], capture_output=True,
                         text=True, timeout=RUN_TIMEOUT_S)
    assert res.returncode == 0, res.stderr  # no JSONDecodeError traceback
    assert res.stdout.startswith("Response: ")
    response = ast.literal_eval(res.stdout.removeprefix("Response: ").strip())  # it prints a dict
    assert response["jsonrpc"] == "2.0" and response["id"] is None
    assert response["error"]["code"] == -32600
    assert response["error"]["data"]["reason"] == "frame_not_terminated"
    assert "newline" in response["error"]["message"]
    assert 0.9 <= time.monotonic() - t0 < RUN_TIMEOUT_S  # at handshake_timeout_s, not at once


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
@pytest.mark.parametrize(
    ("request_json", "expected"),
    [
        pytest.param(None, {"code": -32600, "reason": "invalid_request"}, id="verbatim"),
        pytest.param('{"jsonrpc":"2.0","id":1,"method":"ping"}', "pong", id="as-json-rpc-2.0"),
    ],
)
def test_the_guides_socat_client_gets_an_answer(serve: str, request_json: str | None, expected: object) -> None:
    code = _client("mcp_client.sh.txt", serve)
    if request_json is not None:
        code = code.replace("""'{"method":"ping"}'""", f"'{request_json}'")
    res = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                         env={**os.environ, "LC_ALL": "C"})
    assert res.returncode == 0, res.stderr
    response = json.loads(res.stdout.removeprefix("Response: "))
    if isinstance(expected, dict):
        assert response["id"] is None and response["error"]["code"] == expected["code"]
        assert response["error"]["data"]["reason"] == expected["reason"]
        assert "jsonrpc" in response["error"]["message"]  # it names what is missing
    else:
        assert response == {"jsonrpc": "2.0", "id": 1, "result": expected}


def test_a_batch_against_the_real_broker_and_its_sqlite_store(serve: str) -> None:
    """Batches through the journaled path: writes commit before the array reply leaves."""
    import socket

    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "get_token", "params": {"instance_id": "batcher"}},
        {"jsonrpc": "2.0", "method": "send", "params": {"to": "batcher", "content": "a"}},
        {"jsonrpc": "2.0", "id": 3, "method": "send", "params": {"to": "batcher", "content": "b"}},
        {"jsonrpc": "2.0", "id": 4, "method": "receive", "params": {"wait_s": 30}},
        [1],
    ]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(serve)
        s.sendall(json.dumps(batch).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
    reply = json.loads(buf)
    assert [r["id"] for r in reply] == [1, 3, 4, None]
    assert [m["content"] for m in reply[2]["result"]["messages"]] == ["a", "b"]
    assert reply[3]["error"]["code"] == -32600
