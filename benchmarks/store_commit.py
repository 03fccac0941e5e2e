"""Sends per second through a real broker on the SQLite store: group commit vs one send at a time.

Not a test. For each durability (normal, fsync) and each load it starts the shipped broker
(:func:`parrot_ipc.app.daemon.run_broker`) in a child process on a fresh state dir, sends for
``--seconds`` with trio clients that each send one message at a time (waiting for every
response, so each send is durable when counted), and prints the rate.

    .venv/bin/python benchmarks/store_commit.py [--senders 32] [--seconds 3]

Loads:
    group          ``--senders`` concurrent clients: sends that arrive together share a commit.
    one_at_a_time  the client-side baseline: one client, one send in flight, so every send
                   gets a commit of its own.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import signal
import sqlite3
import tempfile
import time

import trio

from parrot_ipc import AsyncClient, Client
from parrot_ipc.core import BrokerConfig


def _serve(socket_path: str, state_dir: str, durability: str) -> None:
    from parrot_ipc.app.daemon import run_broker

    # The limits a real broker keeps (rate limit, sender quota, mailbox bounds) are lifted:
    # this measures commits, not refusals.
    cfg = BrokerConfig(durability=durability, max_mailbox_messages=10_000_000,  # type: ignore[arg-type]
                       max_mailbox_bytes=1 << 40, rate_per_s=1e9, burst=1e9,
                       max_sender_queued_messages=10_000_000, max_sender_queued_bytes=1 << 40)
    run_broker(socket_path, cfg, store="sqlite", state_dir=state_dir)


async def _load(socket_path: str, senders: int, seconds: float) -> int:
    count = 0
    stop_at = trio.current_time() + seconds

    async def sender(i: int) -> None:
        nonlocal count
        async with AsyncClient(socket_path) as c:
            await c.get_token(f"bench{i}")
            n = 0
            while trio.current_time() < stop_at:
                await c.send("sink", "x" * 100, idempotency_key=f"{i}-{n}")
                n += 1
                count += 1

    async with trio.open_nursery() as nursery:
        for i in range(senders):
            nursery.start_soon(sender, i)
    return count


def run_one(senders: int, durability: str, seconds: float) -> float:
    """Sends per second with ``senders`` concurrent one-at-a-time clients for ``seconds``."""
    with tempfile.TemporaryDirectory() as tmp:
        sock, state = os.path.join(tmp, "run", "mcp.sock"), os.path.join(tmp, "state")
        proc = multiprocessing.Process(target=_serve, args=(sock, state, durability))
        proc.start()
        for _ in range(200):
            try:
                with Client(sock, timeout_s=2) as c:
                    c.ping()
                break
            except Exception:
                time.sleep(0.05)
        t0 = time.perf_counter()
        sent = trio.run(_load, sock, senders, seconds)
        elapsed = time.perf_counter() - t0
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
        db = sqlite3.connect(os.path.join(state, "parrot.db"))
        stored = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        db.close()
        assert stored == sent, f"{stored} stored != {sent} sent"
        return sent / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--senders", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}; {args.senders} concurrent senders, {args.seconds:g} s per run")
    print(f"{'durability':<11} {'load':<14} {'sends/s':>9}")
    for durability in ("normal", "fsync"):
        rates = {}
        for load, senders in (("group", args.senders), ("one_at_a_time", 1)):
            rates[load] = run_one(senders, durability, args.seconds)
            print(f"{durability:<11} {load:<14} {rates[load]:>9.0f}", flush=True)
        print(f"{durability:<11} {'speed-up':<14} {rates['group'] / rates['one_at_a_time']:>8.1f}x", flush=True)


if __name__ == "__main__":
    main()
