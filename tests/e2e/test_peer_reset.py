"""A peer that resets its connection (RST: SO_LINGER 0, unread responses pending) while the
broker reads from it ends only that connection: the broker keeps serving. Found by the
federation SIGKILL test (issue 18), where a reset at that moment stopped the whole broker."""

from __future__ import annotations

import json
import socket
import struct
import time

from parrot_ipc import Client


def _reset_mid_stream(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    req = (json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}) + "\n").encode()
    s.sendall(req * 2000)  # responses pile up unread
    time.sleep(0.05)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # with unread data and linger 0: the broker's next recv gets ECONNRESET


def test_a_peer_that_resets_its_connection_does_not_stop_the_broker(broker) -> None:
    b = broker()
    for _ in range(20):
        _reset_mid_stream(b.socket_path)
    with Client(b.socket_path, timeout_s=5) as c:
        assert c.ping() == "pong"
    assert b.proc.poll() is None, b.log_text()[-2000:]
    assert "ExceptionGroup" not in b.log_text()
