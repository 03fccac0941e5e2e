"""The Parrot IPC security guide's own test list (seed 002, "Testing Security"), case by case.

Each test is named after the guide's case and runs it against a real broker as the guide
describes; root-only because the permission check needs a second Unix user.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


def _request(path: str, frame: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(frame)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf.split(b"\n")[0])


@pytest.fixture
def guide_broker(broker, accounts) -> Iterator:
    with accounts.open_dir("pipc-guide-") as parent:
        yield broker(str(parent / "parrot-mcp" / "mcp.sock"))


def test_1_permission_checks(guide_broker, accounts) -> None:
    """Test 1: another user tries to access the IPC endpoint: permission denied."""
    with accounts.user("parrot-g") as pw:
        name = pw.pw_name
        probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\n"
                 " print('connected')\nexcept PermissionError:\n print('EACCES')\n")
        res = subprocess.run(["runuser", "-u", name, "--", "/usr/bin/python3", "-c", probe,
                              guide_broker.socket_path], capture_output=True, text=True, timeout=30)
        assert res.stdout.strip() == "EACCES", res
        st = os.stat(os.path.dirname(guide_broker.socket_path))
        assert st.st_mode & 0o777 == 0o700 and os.stat(guide_broker.socket_path).st_mode & 0o777 == 0o600


def test_2_injection_attacks(guide_broker, tmp_path: Path) -> None:
    """Test 2: '{"method":"ping; rm -rf /"}' is handled safely and executes nothing."""
    canary = tmp_path / "canary"
    canary.write_text("still here")
    resp = _request(guide_broker.socket_path,
                    b'{"jsonrpc":"2.0","id":1,"method":"ping; rm -rf ' + str(tmp_path).encode() + b'"}\n')
    assert resp["error"]["code"] == -32601
    assert canary.read_text() == "still here"


def test_3_path_traversal(guide_broker) -> None:
    """Test 3: a path-traversal name is rejected by validation and never touches a file."""
    resp = _request(guide_broker.socket_path,
                    b'{"jsonrpc":"2.0","id":1,"method":"get_token","params":{"instance_id":"../../../../etc/passwd"}}\n')
    assert resp["error"]["code"] == -32602
    assert Path("/etc/passwd").read_text().startswith("root:")


def test_4_large_payload(guide_broker) -> None:
    """Test 4: a 10,000,000-byte payload is rejected (over PARROT_MAX_INPUT_SIZE / max_frame_bytes)."""
    payload = b'{"data":"' + b"A" * 10_000_000 + b'"}\n'
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(guide_broker.socket_path)

        def pump() -> None:
            with contextlib.suppress(OSError):  # the broker hangs up mid-frame
                s.sendall(payload)

        threading.Thread(target=pump, daemon=True).start()
        resp = json.loads(s.recv(65536).split(b"\n")[0])
    assert resp["error"]["code"] == -32004 and resp["id"] is None
    assert guide_broker.proc.poll() is None
