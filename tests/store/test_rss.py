"""What a durable broker keeps in RAM (issue 14): bounds on VmRSS, no timing.

A real broker subprocess (``parrot_ipc serve --state-dir``); its VmRSS is read from
``/proc/<pid>/status``. Sends are raw pipelined frames (500 in flight) so that tens of
thousands fit in a CI run.

- Idempotency keys live in SQLite, not in the broker's memory: 50,000 sends with unique keys
  (each acked by id at once, so no mail piles up) grow RSS by less than 8 MiB after a warm-up.
  Before the change each key stayed in memory for ``idempotency_ttl_s``: 28 MiB measured.
- Leases hold ids, not messages: three rounds of "send 20,000, receive and ack them all" under a
  600 s lease end at the RSS of the first round (+ 4 MiB). Before the change the lease heap
  kept each acked message until its lease ran out: about 12 MiB more per round measured.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from .conftest import BrokerProcess, vm_rss_bytes

BATCH = 500
MIB = 1 << 20


class _Conn:
    """One raw JSON-RPC connection: pipelined frames in, their results (in order) out."""

    def __init__(self, path: str, name: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.call([("get_token", {"instance_id": name})])

    def call(self, calls: list[tuple[str, dict[str, object]]]) -> list[dict[str, object]]:
        """Send every call at once and read one answer per call; raise on any error answer."""
        self.sock.sendall(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p}).encode()
                                   + b"\n" for i, (m, p) in enumerate(calls)))
        out = []
        while len(out) < len(calls):
            while b"\n" not in self.buf:
                chunk = self.sock.recv(1 << 20)
                assert chunk, "broker closed the connection"
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            frame = json.loads(line)
            assert "result" in frame, frame
            out.append(frame["result"])
        return out

    def close(self) -> None:
        self.sock.close()


def _start(tmp_path: Path) -> BrokerProcess:
    cfg = tmp_path / "broker.toml"
    cfg.write_text("[server]\nlease_s = 600.0\nmax_mailbox_messages = 100000\nrate_per_s = 1e9\nburst = 1e9\n")
    bp = BrokerProcess(str(tmp_path / "run" / "p.sock"), str(tmp_path / "state"), str(cfg), tmp_path / "broker.log")
    bp.start()
    return bp


def _keyed_sends(snd: _Conn, rcv: _Conn, prefix: str, n: int) -> None:
    """``n`` sends to ``r`` each with a unique idempotency key, each acked by id at once."""
    for start in range(0, n, BATCH):
        res = snd.call([("send", {"to": "r", "content": "x" * 100, "idempotency_key": f"{prefix}{start + i}"})
                        for i in range(min(BATCH, n - start))])
        done = rcv.call([("ack", {"ids": [r["id"] for r in res]})])
        assert done[0]["acked"] == len(res)


def test_unique_idempotency_keys_do_not_grow_rss(tmp_path: Path) -> None:
    bp = _start(tmp_path)
    try:
        assert bp.proc is not None
        snd, rcv = _Conn(bp.socket, "s"), _Conn(bp.socket, "r")
        _keyed_sends(snd, rcv, "warm", 5_000)
        before = vm_rss_bytes(bp.proc.pid)
        _keyed_sends(snd, rcv, "k", 50_000)
        growth = vm_rss_bytes(bp.proc.pid) - before
        # A resend of a key from long ago is still answered from SQLite: same id, nothing queued.
        again = snd.call([("send", {"to": "r", "content": "x" * 100, "idempotency_key": "k7"})] * 2)
        assert again[0]["id"] == again[1]["id"]
        assert rcv.call([("receive", {"max": 10})])[0]["messages"] == []
        print(f"RSS growth over 50,000 unique keys: {growth / MIB:.2f} MiB ({growth / 50_000:.0f} B per key)")
        assert growth < 8 * MIB
        snd.close()
        rcv.close()
    finally:
        bp.stop()


def _fill_and_drain(snd: _Conn, rcv: _Conn, n: int) -> None:
    """Send ``n`` messages to ``r``, then receive (1,000 at a time) and ack them all."""
    for start in range(0, n, BATCH):
        snd.call([("send", {"to": "r", "content": "x" * 100})] * min(BATCH, n - start))
    got = 0
    while got < n:
        msgs = rcv.call([("receive", {"max": 1000})])[0]["messages"]
        assert isinstance(msgs, list) and msgs, f"only {got} of {n} came back"
        rcv.call([("ack", {"ids": [m["id"] for m in msgs]})])
        got += len(msgs)


def test_acked_messages_leave_memory_before_their_lease_ends(tmp_path: Path) -> None:
    bp = _start(tmp_path)
    try:
        assert bp.proc is not None
        snd, rcv = _Conn(bp.socket, "s"), _Conn(bp.socket, "r")
        rss = []
        for _ in range(3):
            _fill_and_drain(snd, rcv, 20_000)
            rss.append(vm_rss_bytes(bp.proc.pid))
        print("RSS after each fill-and-drain of 20,000:", [f"{r / MIB:.1f} MiB" for r in rss])
        assert rss[2] - rss[0] < 4 * MIB
        snd.close()
        rcv.close()
    finally:
        bp.stop()
