"""The suite's scenarios. Each takes a running server (parrot-ipc or the floor) and sizes, drives it
with ``parrot_ipc.Client`` / ``AsyncClient`` from this process, and returns plain numbers."""

from __future__ import annotations

import multiprocessing
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import trio

from parrot_ipc import AsyncClient, Client

from .servers import RedisServer, Server, rss_bytes

PAD = "x" * 100  # message content: 100 bytes


@dataclass(frozen=True)
class Sizes:
    seq_sends: int
    pipelined_sends: int
    pipeline_depth: int
    deliver_pairs: int
    deliver_per_sender: int
    deliver_window: int
    get_tokens: int
    idle_stages: tuple[int, int]
    pings: int
    deep_depths: tuple[int, int]
    deep_iters: int
    scaling_pairs: tuple[int, ...]
    scaling_total: int
    redis_pushes: int


FULL = Sizes(seq_sends=20_000, pipelined_sends=50_000, pipeline_depth=100, deliver_pairs=16,
             deliver_per_sender=2_000, deliver_window=32, get_tokens=2_000, idle_stages=(1_000, 10_000),
             pings=1_000, deep_depths=(100, 100_000), deep_iters=500, scaling_pairs=(1, 4, 16, 64),
             scaling_total=16_000, redis_pushes=20_000)
QUICK = Sizes(seq_sends=1_000, pipelined_sends=2_000, pipeline_depth=100, deliver_pairs=16,
              deliver_per_sender=64, deliver_window=32, get_tokens=200, idle_stages=(50, 200),
              pings=100, deep_depths=(100, 2_000), deep_iters=100, scaling_pairs=(1, 4, 16, 64),
              scaling_total=1_280, redis_pushes=1_000)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _us(ns: list[int]) -> dict[str, float]:
    return {"p50_us": pct(ns, 0.5) / 1000, "p99_us": pct(ns, 0.99) / 1000}


# --------------------------------------------------------------------------- 1. seq_send
def _round_trips(op: Callable[[], object], warm: int, n: int) -> dict[str, float]:
    """``warm`` untimed calls of ``op``, then ``n`` timed ones: rt/s and p50/p99 in us."""
    for _ in range(warm):
        op()
    lat: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(n):
        t0 = clock()
        op()
        lat.append(clock() - t0)
    elapsed = (clock() - start) / 1e9
    return {"rt_per_s": n / elapsed, **_us(lat)}


def seq_send(srv: Server, sz: Sizes) -> dict[str, float]:
    """One authenticated connection, sequential ``send`` round trips through ``Client``."""
    with Client(srv.sock) as c:
        c.get_token("seq")
        return _round_trips(lambda: c.send("sink", PAD), min(500, sz.seq_sends), sz.seq_sends)


# --------------------------------------------------------------------------- 7. redis
def redis_lpush(srv: RedisServer, sz: Sizes) -> dict[str, float]:
    """redis-py LPUSH round trips on a Unix socket (AOF, everysec)."""
    import redis

    r = redis.Redis(unix_socket_path=srv.sock)
    payload = PAD.encode()
    try:
        return _round_trips(lambda: r.lpush("q", payload), min(500, sz.redis_pushes), sz.redis_pushes)
    finally:
        r.close()


# --------------------------------------------------------------------------- 2. pipelined_send
def pipelined_send(srv: Server, sz: Sizes) -> dict[str, float]:
    """``pipeline_depth`` sends in flight on one ``AsyncClient`` connection."""

    async def run() -> float:
        async with AsyncClient(srv.sock) as c:
            await c.get_token("pipe")
            start = time.perf_counter()
            await _in_lanes(sz.pipelined_sends, sz.pipeline_depth, lambda: c.send("sink", PAD))
            return time.perf_counter() - start

    return {"msgs_per_s": sz.pipelined_sends / trio.run(run)}


async def _in_lanes(total: int, lanes: int, step: Callable[[], Awaitable[object]]) -> None:
    """Await ``step()`` ``total`` times in all, over ``lanes`` concurrent tasks that each await
    theirs one after another (the first ``total % lanes`` lanes do one more)."""
    per_lane, extra = divmod(total, lanes)

    async def lane(n: int) -> None:
        for _ in range(n):
            await step()

    async with trio.open_nursery() as nursery:
        for k in range(lanes):
            nursery.start_soon(lane, per_lane + (1 if k < extra else 0))


# --------------------------------------------------------------------------- 3./8. deliver
async def _deliver(sock: str, pairs: int, per_sender: int, window: int, tag: str,
                   recv_sock: str | None = None, suffix: str = "") -> dict[str, float]:
    """``pairs`` sender/receiver pairs, each on its own connection. Each sender keeps up to
    ``window`` sends in flight; each receiver loops ``receive(max=100, wait_s=1)`` then ``ack``.
    Returns delivered msgs/s (first send to last receive) and send-to-receive latency.
    ``recv_sock``/``suffix``: receivers on another broker, addressed ``name<suffix>`` (federated)."""
    clock = time.perf_counter_ns
    lat: list[int] = []
    ready = 0
    all_ready, go = trio.Event(), trio.Event()
    last = 0

    def arrived() -> None:
        nonlocal ready
        ready += 1
        if ready == 2 * pairs:
            all_ready.set()

    async def receiver(i: int) -> None:
        nonlocal last
        async with AsyncClient(recv_sock or sock) as c:
            await c.get_token(f"{tag}r{i}")
            arrived()
            await go.wait()
            got = 0
            while got < per_sender:
                msgs = await c.receive(max=100, wait_s=1.0)
                now = clock()
                for m in msgs:
                    lat.append(now - int(m.content.split(" ", 1)[0]))
                if msgs:
                    got += len(msgs)
                    last = max(last, now)
                    await c.ack([m.id for m in msgs])

    async def sender(i: int) -> None:
        async with AsyncClient(sock) as c:
            await c.get_token(f"{tag}s{i}")
            arrived()
            await go.wait()
            to = f"{tag}r{i}{suffix}"
            await _in_lanes(per_sender, window, lambda: c.send(to, f"{clock()} {PAD}"))

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            for i in range(pairs):
                nursery.start_soon(receiver, i)
                nursery.start_soon(sender, i)
            await all_ready.wait()
            start = clock()
            go.set()
    total = pairs * per_sender
    assert len(lat) == total, f"{len(lat)} delivered of {total}"
    return {"msgs_per_s": total / ((last - start) / 1e9), "p50_latency_us": pct(lat, 0.5) / 1000,
            "p99_latency_us": pct(lat, 0.99) / 1000}


def deliver(srv: Server, sz: Sizes) -> dict[str, float]:
    return trio.run(_deliver, srv.sock, sz.deliver_pairs, sz.deliver_per_sender, sz.deliver_window, "d")


def scaling(srv: Server, sz: Sizes) -> dict[str, float]:
    """Delivered msgs/s at each pair count (same total messages at each point), keyed by pairs."""
    out = {}
    for pairs in sz.scaling_pairs:
        res = trio.run(_deliver, srv.sock, pairs, sz.scaling_total // pairs, sz.deliver_window, f"k{pairs}")
        out[str(pairs)] = res["msgs_per_s"]
    return out


# --------------------------------------------------------------------------- 4. get_token
def get_token(srv: Server, sz: Sizes) -> dict[str, float]:
    """Connect (the broker reads SO_PEERCRED and runs the policy), ``get_token``, close; timed
    from before connect to the token in hand."""
    clock = time.perf_counter_ns
    for i in range(min(100, sz.get_tokens)):
        with Client(srv.sock) as c:
            c.get_token(f"warm{i}")
    lat: list[int] = []
    for i in range(sz.get_tokens):
        t0 = clock()
        c = Client(srv.sock)
        c.get_token(f"g{i}")
        lat.append(clock() - t0)
        c.close()
    return _us(lat)


# --------------------------------------------------------------------------- 5. idle
def _get_token_frame(name: str) -> bytes:
    return (b'{"jsonrpc":"2.0","id":1,"method":"get_token","params":{"instance_id":"'
            + name.encode() + b'"}}\n')


def _read_line(s: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _idle_child(sock_path: str, stages: tuple[int, ...], pipe: Pipe) -> None:
    """Child process: open and authenticate connections up to each stage, report, wait."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks: list[socket.socket] = []
    try:
        for target in stages:
            while len(socks) < target:
                batch = []
                for _ in range(min(200, target - len(socks))):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(sock_path)
                    batch.append(s)
                for k, s in enumerate(batch):
                    s.sendall(_get_token_frame(f"idle{len(socks) + k}"))
                for s in batch:
                    if b'"result"' not in _read_line(s):
                        raise RuntimeError("get_token failed")
                socks.extend(batch)
            pipe.send(len(socks))
            pipe.recv()
    except Exception as exc:
        pipe.send(f"error: {exc!r}")
        pipe.recv()
    finally:
        for s in socks:
            s.close()


def _pings(sock: str, n: int) -> list[int]:
    clock = time.perf_counter_ns
    lat = []
    with Client(sock) as c:
        for _ in range(n):
            t0 = clock()
            c.ping()
            lat.append(clock() - t0)
    return lat


def idle(srv: Server, sz: Sizes) -> dict[str, float]:
    """RSS per authenticated idle connection (from /proc), and a fresh client's ping p99 meanwhile."""
    _pings(srv.sock, 200)
    time.sleep(0.3)
    base = rss_bytes(srv.pid)
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_idle_child, args=(srv.sock, sz.idle_stages, theirs), daemon=True)
    child.start()
    out: dict[str, float] = {}
    try:
        for stage in sz.idle_stages:
            got = ours.recv()
            if got != stage:
                raise RuntimeError(f"idle child: {got}")
            time.sleep(0.5)
            rss = rss_bytes(srv.pid)
            lat = _pings(srv.sock, sz.pings)
            out[f"rss_per_conn_bytes_{stage}"] = (rss - base) / stage
            out[f"ping_p99_ms_{stage}"] = pct(lat, 0.99) / 1e6
            ours.send("next")
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
    return out


# --------------------------------------------------------------------------- 6. deep_mailbox
def _blast(sock: str, to: str, n: int, name: str) -> None:
    """Queue ``n`` messages to ``to`` fast: raw frames, 1,000 in flight (the filler, not timed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(_get_token_frame(name))
    _read_line(s)
    frame = (b'{"jsonrpc":"2.0","id":2,"method":"send","params":{"to":"' + to.encode()
             + b'","content":"' + PAD.encode() + b'"}}\n')
    left = n
    while left:
        k = min(1000, left)
        s.sendall(frame * k)
        seen = 0
        tail = b""
        while seen < k:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            if b'"error"' in tail[-200:] + chunk:
                raise RuntimeError("a filler send failed")
            seen += chunk.count(b"\n")
            tail = chunk
        left -= k
    s.close()


def deep_mailbox(srv: Server, sz: Sizes) -> dict[str, float]:
    """``receive(max=10)`` p50 with a mailbox of each depth; the depth is kept (ack the 10, send 10)."""
    out: dict[str, float] = {}
    clock = time.perf_counter_ns
    for depth in sz.deep_depths:
        box = f"deep{depth}"
        with Client(srv.sock) as rcv, Client(srv.sock) as snd:
            rcv.get_token(box)
            snd.get_token(f"fill{depth}")
            _blast(srv.sock, box, depth, f"blast{depth}")
            lat = []
            for _ in range(sz.deep_iters):
                t0 = clock()
                msgs = rcv.receive(max=10)
                lat.append(clock() - t0)
                assert len(msgs) == 10, len(msgs)
                rcv.ack([m.id for m in msgs])
                for _ in range(10):
                    snd.send(box, PAD)
        out[f"p50_us_{depth}"] = pct(lat, 0.5) / 1000
    lo, hi = sz.deep_depths
    out["deep_over_shallow"] = out[f"p50_us_{hi}"] / out[f"p50_us_{lo}"]
    return out


SCENARIOS: dict[str, Any] = {
    "seq_send": seq_send,
    "pipelined_send": pipelined_send,
    "deliver": deliver,
    "get_token": get_token,
    "idle": idle,
    "deep_mailbox": deep_mailbox,
    "scaling": scaling,
}
