"""The ``memory`` scenario (issue 14): what the broker holds in RAM as mail piles up.

Parrot-ipc only (the floor has no store). For each content size (100 B, 4 KiB) and each depth
(``--memory-depths``, default 0, 10,000, 100,000): a fresh broker, the depth queued to one
mailbox (raw pipelined frames), then broker VmRSS (``/proc/<pid>/status``). At the largest
depth the broker is stopped (SIGTERM) and started again on the same state dir, timed from the
spawn until ``ping`` answers and until ``list_instances`` does (the store fully open). Then, on
a fresh broker, ``--memory-keys`` (default 100,000) sends each with a unique
``idempotency_key``: RSS growth divided by the sends, over all of them and over the second half
alone. Last, ``receive(max=10)`` p50 at ``--memory-deep`` (default 100,000) queued vs at 100.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from parrot_ipc import Client
from parrot_ipc.errors import BrokerUnavailable

from .scenarios import _get_token_frame, _read_line, pct
from .servers import ParrotServer, rss_bytes


@dataclass(frozen=True)
class MemorySizes:
    """Depths (messages queued), content sizes (bytes), keyed sends, deep-receive depth."""

    depths: tuple[int, ...] = (0, 10_000, 100_000)
    contents: tuple[int, ...] = (100, 4096)
    keys: int = 100_000
    deep: int = 100_000
    deep_iters: int = 300


QUICK_MEMORY = MemorySizes(depths=(0, 1_000), contents=(100,), keys=2_000, deep=2_000, deep_iters=50)


def _fill(sock: str, to: str, n: int, content: str, keyed: str | None = None) -> None:
    """Queue ``n`` sends to ``to`` over raw frames, 500 in flight; ``keyed``: a unique
    ``idempotency_key`` per send with that prefix. Raises RuntimeError on any error answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(_get_token_frame(f"fill-{to}-{keyed or 'n'}"))
    _read_line(s)
    head = b'{"jsonrpc":"2.0","id":2,"method":"send","params":{"to":"' + to.encode() + b'","content":"'
    body = content.encode() + b'"'
    done = 0
    while done < n:
        k = min(500, n - done)
        if keyed is None:
            s.sendall((head + body + b"}}\n") * k)
        else:
            s.sendall(b"".join(head + body + b',"idempotency_key":"' + f"{keyed}{done + i}".encode()
                               + b'"}}\n' for i in range(k)))
        seen, buf = 0, b""
        while seen < k:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            buf = buf[-200:] + chunk
            if b'"error"' in buf:
                raise RuntimeError(f"a filler send failed: {buf[-300:]!r}")
            seen += chunk.count(b"\n")
        done += k
    s.close()


def _settled_rss(pid: int) -> int:
    time.sleep(0.5)
    return rss_bytes(pid)


def _restart_s(srv: ParrotServer) -> tuple[float, float]:
    """Stop the broker, start it on the same state dir: seconds from spawn to ``ping`` answered,
    and to a ``list_instances`` answered (it waits until the mailboxes are read, issue 14)."""
    assert srv.proc is not None
    srv.proc.terminate()
    srv.proc.wait(60)
    args = srv.proc.args
    t0 = time.monotonic()
    srv.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        if srv.proc.poll() is not None:
            raise RuntimeError("broker exited on restart")
        try:
            with Client(srv.sock, timeout_s=60) as c:
                c.ping()
                ping_s = time.monotonic() - t0
                c.get_token("restart-probe")
                c.list_instances()
                return ping_s, time.monotonic() - t0
        except (OSError, ConnectionError, BrokerUnavailable):
            time.sleep(0.01)


def _deep_p50(srv: ParrotServer, depth: int, iters: int) -> float:
    box = f"deep{depth}"
    with Client(srv.sock) as rcv, Client(srv.sock) as snd:
        rcv.get_token(box)
        snd.get_token(f"dfill{depth}")
        _fill(srv.sock, box, depth, "x" * 100)
        lat = []
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            msgs = rcv.receive(max=10)
            lat.append(time.perf_counter_ns() - t0)
            rcv.ack([m.id for m in msgs])
            for _ in range(len(msgs)):
                snd.send(box, "x" * 100)
    return pct(lat, 0.5) / 1000


def memory(ms: MemorySizes, log: object = None) -> dict[str, float]:
    """Every figure of the scenario, flat: ``rss_mib_<content>B_<depth>``, ``rss_per_msg_bytes_...``,
    ``startup_s_<content>B_<depth>``, ``rss_per_key_bytes``, ``deep_p50_us_<depth>``."""
    out: dict[str, float] = {}
    say = log if callable(log) else (lambda m: print(m, file=sys.stderr, flush=True))
    for size in ms.contents:
        content = "x" * size
        base = 0
        for depth in ms.depths:
            with ParrotServer() as srv:
                if depth:
                    _fill(srv.sock, "heap", depth, content)
                rss = _settled_rss(srv.pid)
                out[f"rss_mib_{size}B_{depth}"] = rss / 2**20
                if depth == 0:
                    base = rss
                elif base:
                    out[f"rss_per_msg_bytes_{size}B_{depth}"] = (rss - base) / depth
                if depth == max(ms.depths) and depth:
                    out[f"startup_s_{size}B_{depth}"], out[f"startup_open_s_{size}B_{depth}"] = _restart_s(srv)
                    out[f"rss_after_restart_mib_{size}B_{depth}"] = _settled_rss(srv.pid) / 2**20
            say(f"  memory {size} B x {depth:,}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in out.items() if k.endswith(f"{size}B_{depth}")))
    with ParrotServer() as srv:
        _fill(srv.sock, "keys", 1000, "x" * 100, keyed="warm")
        before = _settled_rss(srv.pid)
        half = ms.keys // 2
        _fill(srv.sock, "keys", half, "x" * 100, keyed="k")
        mid = _settled_rss(srv.pid)
        _fill(srv.sock, "keys", ms.keys - half, "x" * 100, keyed="l")
        end = _settled_rss(srv.pid)
        out["rss_per_key_bytes"] = (end - before) / ms.keys
        # The second half alone: bounded caches (message bodies, SQLite's page cache) fill in
        # the first; what still grows per key shows here.
        out["rss_per_key_second_half_bytes"] = (end - mid) / (ms.keys - half)
        say(f"  memory keys: {out['rss_per_key_bytes']:.0f} B of RSS per unique key over {ms.keys:,} "
            f"({out['rss_per_key_second_half_bytes']:.0f} B over the second half)")
    with ParrotServer() as srv:
        for depth in (100, ms.deep):
            out[f"deep_p50_us_{depth}"] = _deep_p50(srv, depth, ms.deep_iters)
    out["deep_over_shallow"] = out[f"deep_p50_us_{ms.deep}"] / out["deep_p50_us_100"]
    say(f"  memory deep: p50 {out['deep_p50_us_100']:.0f} us at 100, {out[f'deep_p50_us_{ms.deep}']:.0f} us "
        f"at {ms.deep:,}")
    return out


def parse_sizes(depths: str | None, keys: int | None, deep: int | None, quick: bool) -> MemorySizes:
    """``MemorySizes`` from the suite's flags (comma-separated depths); None keeps the default."""
    ms = QUICK_MEMORY if quick else MemorySizes()
    return MemorySizes(
        depths=tuple(int(x) for x in depths.split(",")) if depths else ms.depths,
        contents=ms.contents, keys=keys if keys is not None else ms.keys,
        deep=deep if deep is not None else ms.deep, deep_iters=ms.deep_iters)


if __name__ == "__main__":  # pragma: no cover - manual
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(memory(QUICK_MEMORY))
