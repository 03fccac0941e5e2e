"""The core's cost per single request: ``Broker.handle_frame`` on one ``ping`` frame, no I/O.

Usage: ``.venv/bin/python benchmarks/handle_frame.py [--frames N] [--repeats R]``. It prints the
best of R timings of N frames, in nanoseconds per frame. To compare with another commit, run
the same command with ``PYTHONPATH=<that commit's src>`` (``git archive <commit> src | tar -x``).
Issue 16 used it to check that batches, exact number ids and the parse-error check add no
measurable work to a single request (``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import time

import parrot_ipc
from parrot_ipc.core import Broker, BrokerConfig, Connection, DefaultPolicy, PeerCredentials

PING = b'{"jsonrpc":"2.0","id":12345,"method":"ping"}'


def measure(frames: int, repeats: int) -> float:
    """Best-of-``repeats`` seconds per ``handle_frame`` call over ``frames`` ping frames."""
    broker = Broker(config=BrokerConfig(rate_per_s=1e12, burst=1e12), policy=DefaultPolicy(0),
                    clock=time.time)
    conn = broker.accept(PeerCredentials(1, 0, 0))
    assert isinstance(conn, Connection), conn
    handle = broker.handle_frame
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(frames):
            handle(conn, PING)
        best = min(best, time.perf_counter() - t0)
    return best / frames


def main() -> None:
    """Parse the arguments, measure, print one line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    per = measure(args.frames, args.repeats)
    print(f"{parrot_ipc.__file__}: {per * 1e9:.0f} ns per ping frame (best of {args.repeats} x {args.frames})")


if __name__ == "__main__":
    main()
