"""The per-request cost of re-checking a peer's executable (issue 13, finding 3). Not a test.

Two measurements:

- ``probe``: :meth:`parrot_ipc.os.peer.PinnedProcess.exe` on a live child process, with its
  pidfd (readlink(2) of ``/proc/<pid>/exe`` + pidfd_send_signal(2)) and without one (the
  start time read before and after, for kernels without SO_PEERPIDFD): nanoseconds per call.
- ``ping``: sequential ``ping`` round trips from one blocking :class:`parrot_ipc.Client` to a
  real broker (memory store) whose rule pins the executable (``executables = ["/*"]``) and
  to one whose rule does not: microseconds per request, and the difference.

    .venv/bin/python benchmarks/exe_recheck.py [--calls 200000] [--pings 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from parrot_ipc import Client
from parrot_ipc.os.peer import PinnedProcess, process_start_time


def probe_ns(calls: int, with_pidfd: bool) -> float:
    """Nanoseconds per :meth:`PinnedProcess.exe` on a sleeping child process."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        pidfd = os.pidfd_open(child.pid) if with_pidfd else None
        pinned = PinnedProcess(child.pid, pidfd, process_start_time(child.pid))
        assert pinned.exe() is not None
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            pinned.exe()
        elapsed = time.perf_counter_ns() - t0
        pinned.close()
        return elapsed / calls
    finally:
        child.kill()
        child.wait()


def ping_us(pings: int, pinned: bool) -> float:
    """Microseconds per sequential ``ping`` to a fresh broker whose one rule pins the
    executable (``pinned``) or not."""
    with tempfile.TemporaryDirectory(prefix="pipc-exe-") as d:
        cfg = os.path.join(d, "config.toml")
        exes = 'executables = ["/*"]\n' if pinned else ""
        with open(cfg, "w") as f:
            f.write(f"[server]\nrate_per_s = 1e9\nburst = 1e9\n\n[[peers]]\nuids = [{os.geteuid()}]\n{exes}")
        sock = os.path.join(d, "run", "mcp.sock")
        proc = subprocess.Popen([sys.executable, "-m", "parrot_ipc", "serve", "--socket", sock, "--store", "memory",
                                 "--config", cfg], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(sock):
                if time.monotonic() > deadline:
                    raise TimeoutError("the broker did not start")
                time.sleep(0.02)
            with Client(sock) as c:
                c.get_token("bench")
                for _ in range(1000):  # warm up
                    c.ping()
                t0 = time.perf_counter()
                for _ in range(pings):
                    c.ping()
                return (time.perf_counter() - t0) / pings * 1e6
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


def main() -> None:
    """Print the figures (median of ``--runs``) for docs/benchmarks.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--pings", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(f"# {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"Linux {platform.release()}; median of {args.runs} runs")
    with_fd = statistics.median(probe_ns(args.calls, True) for _ in range(args.runs))
    without = statistics.median(probe_ns(args.calls, False) for _ in range(args.runs))
    print(f"probe, pidfd:       {with_fd / 1000:.2f} us per exe() call")
    print(f"probe, no pidfd:    {without / 1000:.2f} us per exe() call")
    plain, pinned = [], []
    for _ in range(args.runs):
        plain.append(ping_us(args.pings, False))
        pinned.append(ping_us(args.pings, True))
    p, q = statistics.median(plain), statistics.median(pinned)
    print(f"ping, rule without executables: {p:.2f} us per request ({min(plain):.2f}-{max(plain):.2f})")
    print(f"ping, rule with executables:    {q:.2f} us per request ({min(pinned):.2f}-{max(pinned):.2f})")
    print(f"re-check cost per request:      {q - p:+.2f} us ({(q - p) / p * 100:+.1f} %)")


if __name__ == "__main__":
    main()
