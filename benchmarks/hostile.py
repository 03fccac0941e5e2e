"""Figures for hostile input against a real broker process (not a test).

Measures, each against a fresh `parrot-ipc serve` child process (memory store, so the figures
are the connection handling's and not SQLite's):

- ``rss_10mb``: VmRSS growth (peak, sampled every 2 ms) while one client sends a 10 MB frame;
  the bound is 2 x max_frame_bytes + 1 MiB.
- ``slowloris``: N connections each send one byte a second; a fresh client pings every 20 ms
  throughout; reports the ping p50/p99 and when the slow connections were closed
  (handshake_timeout_s).
- ``non_reader``: one client pipelines 100,000 pings and never reads; reports the broker's
  VmRSS growth and another client's ping p50/p99 meanwhile.

    .venv/bin/python benchmarks/hostile.py [--slow-connections 1000] [--handshake-timeout-s 10]

Prints a table and writes ``benchmarks/results/hostile.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from parrot_ipc import Client

MiB = 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Broker:
    def __init__(self, *extra: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="pipc-bench-")
        self.sock = os.path.join(self.dir, "run", "mcp.sock")
        cfg = os.path.join(self.dir, "c.toml")
        Path(cfg).write_text("[server]\n" + "".join(f"{a}\n" for a in extra))
        self.proc = subprocess.Popen([sys.executable, "-m", "parrot_ipc", "serve", "--socket", self.sock,
                                      "--store", "memory", "--config", cfg, "--log-level", "WARNING"],
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with Client(self.sock) as c:
                    c.ping()
                break
            except Exception:
                time.sleep(0.05)
        with Client(self.sock) as c:
            for _ in range(100):
                c.ping()
        time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)


def bench_rss_10mb() -> dict[str, Any]:
    b = Broker()
    before, peak, done = rss(b.proc.pid), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss(b.proc.pid))
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    s = socket.socket(socket.AF_UNIX)
    s.connect(b.sock)
    payload = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"A" * (10 * MiB) + b'"}}\n'

    def pump() -> None:
        with contextlib.suppress(OSError):
            s.sendall(payload)

    threading.Thread(target=pump, daemon=True).start()
    reply = json.loads(s.recv(4096).split(b"\n")[0])
    time.sleep(1.5)
    s.close()
    done.set()
    t.join()
    b.stop()
    growth = peak - before
    return {"code": reply["error"]["code"], "rss_before_bytes": before, "rss_peak_growth_bytes": growth,
            "bound_bytes": 2 * 65536 + MiB, "met": growth < 2 * 65536 + MiB}


def _drip_byte(slow: list[socket.socket], closed: dict[int, float]) -> None:
    """Send one byte on each connection of ``slow`` not yet in ``closed``."""
    for i, s in enumerate(slow):
        if i not in closed:
            with contextlib.suppress(OSError):
                s.send(b"{")


def _note_closes(slow: list[socket.socket], closed: dict[int, float], at_s: float) -> None:
    """Put each connection of ``slow`` the broker has closed into ``closed``, at ``at_s``."""
    for i, s in enumerate(slow):
        if i in closed:
            continue
        try:
            if s.recv(16) == b"":
                closed[i] = at_s
        except BlockingIOError:
            pass
        except OSError:
            closed[i] = at_s


def _drip(sock_path: str, n: int, limit_s: float, out: Any) -> None:
    """Child process: open ``n`` connections, send one byte a second on each, record closes."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 256), hard))
    slow = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        s.setblocking(False)
        slow.append(s)
    t0 = time.monotonic()
    out.send("connected")
    closed: dict[int, float] = {}
    next_drip = t0
    while len(closed) < n and time.monotonic() - t0 < limit_s:
        now = time.monotonic()
        if now >= next_drip:
            _drip_byte(slow, closed)
            next_drip = now + 1.0
        _note_closes(slow, closed, now - t0)
        time.sleep(0.01)
    out.send(sorted(closed.values()))


def bench_slowloris(n: int, handshake_timeout_s: float) -> dict[str, Any]:
    import multiprocessing

    b = Broker(f"handshake_timeout_s = {handshake_timeout_s}")
    here, there = multiprocessing.Pipe()
    child = multiprocessing.Process(target=_drip, args=(b.sock, n, handshake_timeout_s + 10, there))
    child.start()
    assert here.recv() == "connected"
    rtts: list[float] = []
    stamps: list[float] = []
    t0 = time.perf_counter()
    with Client(b.sock) as c:
        c.get_token("fresh")
        while not here.poll():
            t = time.perf_counter()
            c.ping()
            rtts.append(time.perf_counter() - t)
            stamps.append(t - t0)
            time.sleep(0.02)
    if os.environ.get("HOSTILE_DEBUG"):
        worst = sorted(zip(rtts, stamps, strict=True), reverse=True)[:8]
        print("worst pings (ms @ s):", [(round(r * 1000, 1), round(at, 2)) for r, at in worst])
    times = here.recv()
    child.join(10)
    b.stop()
    return {"connections": n, "handshake_timeout_s": handshake_timeout_s, "pings": len(rtts),
            "ping_p50_ms": round(statistics.median(rtts) * 1000, 3), "ping_p99_ms": round(pct(rtts, 0.99) * 1000, 3),
            "ping_max_ms": round(max(rtts) * 1000, 3),
            "closed": len(times), "closed_first_s": round(times[0], 2) if times else None,
            "closed_last_s": round(times[-1], 2) if times else None,
            "met": bool(rtts) and pct(rtts, 0.99) < 0.050 and len(times) == n}


def bench_non_reader(requests: int) -> dict[str, Any]:
    b = Broker()
    before = rss(b.proc.pid)
    hog = socket.socket(socket.AF_UNIX)
    hog.connect(b.sock)
    hog.setblocking(False)
    data = b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n' % i for i in range(requests))
    sent, stalled = 0, None
    while sent < len(data):
        try:
            sent += hog.send(data[sent : sent + 65536])
            stalled = None
        except BlockingIOError:
            stalled = stalled or time.monotonic()
            if time.monotonic() - stalled > 1.0:
                break
            time.sleep(0.005)
    rtts = []
    with Client(b.sock) as c:
        for _ in range(500):
            t = time.perf_counter()
            c.ping()
            rtts.append(time.perf_counter() - t)
    growth = rss(b.proc.pid) - before
    hog.close()
    b.stop()
    return {"requests": requests, "bytes_accepted_before_backpressure": sent, "rss_growth_bytes": growth,
            "other_ping_p50_ms": round(statistics.median(rtts) * 1000, 3),
            "other_ping_p99_ms": round(pct(rtts, 0.99) * 1000, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slow-connections", type=int, default=1000)
    ap.add_argument("--handshake-timeout-s", type=float, default=10.0)
    ap.add_argument("--requests", type=int, default=100_000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.slow_connections + 256)), hard))
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}",
        "rss_10mb": bench_rss_10mb(),
        "slowloris": bench_slowloris(args.slow_connections, args.handshake_timeout_s),
        "non_reader": bench_non_reader(args.requests),
    }
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/hostile.json").write_text(json.dumps(out, indent=2) + "\n")
    r, s, n = out["rss_10mb"], out["slowloris"], out["non_reader"]
    print(f"# {out['machine']}")
    print(f"rss_10mb    peak RSS growth {r['rss_peak_growth_bytes'] / MiB:.2f} MiB (bound {r['bound_bytes'] / MiB:.2f} MiB), code {r['code']}")
    print(f"slowloris   {s['connections']} conns x 1 B/s: ping p50 {s['ping_p50_ms']} ms, p99 {s['ping_p99_ms']} ms "
          f"over {s['pings']} pings; closed {s['closed']} at {s['closed_first_s']}-{s['closed_last_s']} s "
          f"(handshake_timeout_s {s['handshake_timeout_s']})")
    print(f"non_reader  {n['requests']} pipelined pings, unread: RSS growth {n['rss_growth_bytes'] / MiB:.2f} MiB; "
          f"other client ping p50 {n['other_ping_p50_ms']} ms, p99 {n['other_ping_p99_ms']} ms")


if __name__ == "__main__":
    main()
