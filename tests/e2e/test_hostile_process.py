"""Hostile clients against a real broker process: memory stays bounded (VmRSS from /proc)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

from tests.store.conftest import vm_rss_bytes

from parrot_ipc import Client

MAX_FRAME_BYTES = 65536
MiB = 1024 * 1024


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every few ms; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, vm_rss_bytes(self.pid))
            time.sleep(0.002)

    def stop(self) -> int:
        self.done.set()
        self.join(5)
        return self.peak


def _settle(b) -> int:
    with Client(b.socket_path) as c:  # warm every code path a ping and a refusal use
        for _ in range(50):
            c.ping()
    time.sleep(0.2)
    return vm_rss_bytes(b.proc.pid)


def test_large_payload_10mb_frame_grows_rss_by_less_than_two_frames_plus_1mib(broker) -> None:
    b = broker()
    before = _settle(b)
    sampler = RssSampler(b.proc.pid)
    sampler.start()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(b.socket_path)
    s.settimeout(10)
    payload = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"A" * (10 * MiB) + b'"}}\n'
    threading.Thread(target=lambda: _quiet_sendall(s, payload), daemon=True).start()
    reply = s.recv(4096)
    assert json.loads(reply.split(b"\n")[0])["error"]["code"] == -32004
    time.sleep(1.5)  # past the broker's linger
    s.close()
    peak = sampler.stop()
    growth = peak - before
    assert growth < 2 * MAX_FRAME_BYTES + MiB, f"RSS grew by {growth} bytes"
    with Client(b.socket_path) as c:
        assert c.ping() == "pong"


def _quiet_sendall(s: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the broker hangs up mid-frame: expected
        s.sendall(data)


def test_a_client_pipelining_100000_requests_without_reading_keeps_rss_bounded(broker) -> None:
    b = broker()
    before = _settle(b)
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(b.socket_path)
    hog.setblocking(False)
    pings = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % i for i in range(100_000))
    sent, stalled_since = 0, None
    while sent < len(pings):
        try:
            sent += hog.send(pings[sent : sent + 65536])
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 1.0:
                break  # the broker stopped reading us
            time.sleep(0.01)
    assert sent < len(pings)
    # Another client is served meanwhile (its latency is measured in benchmarks/hostile.py).
    with Client(b.socket_path) as c:
        assert [c.ping() for _ in range(50)] == ["pong"] * 50
    growth = vm_rss_bytes(b.proc.pid) - before
    # Bounded by max_pending_bytes (4 MiB) + max_pending_responses frames + socket buffers.
    assert growth < 16 * MiB, f"RSS grew by {growth} bytes"
    hog.close()
