"""Bytes the broker writes per 100 B ``send`` (issue 14: "each 100 B send writes about 20 KB").

    .venv/bin/python benchmarks/bytes_per_send.py [N]     # default N = 2000

A fresh broker (``benchmarks/servers.py``, durability normal), one client sending N messages of
100 B content one after the other (each waits for its response, so each is its own commit:
the worst case for group commit), with and without a unique ``idempotency_key``. Prints, per
send, the broker's ``wchar`` and ``syscw`` from ``/proc/PID/io`` (proc(5): bytes passed to,
and number of, ``write(2)``/``pwrite(2)`` calls, WAL frames and checkpoints included; the
responses go out with ``send(2)``, which is not counted there). ``write_bytes`` is not used: it
stays 0 on tmpfs and lags on a disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.servers import ParrotServer
from parrot_ipc import Client


def _io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def measure(n: int, keys: bool) -> str:
    """One line: per-send ``wchar`` bytes and write calls over ``n`` sends."""
    with ParrotServer() as srv:
        assert srv.proc is not None
        content = "x" * 100
        with Client(srv.sock) as c:
            c.get_token("alice")
            c.send("bob", content)  # warm-up: tables and index pages exist
            io0 = _io(srv.proc.pid)
            for i in range(n):
                c.send("bob", content, idempotency_key=f"k{i}" if keys else None)
            io1 = _io(srv.proc.pid)
    return (f"{n} sends of 100 B{' with keys' if keys else ''}: "
            f"wchar {(io1['wchar'] - io0['wchar']) / n:,.0f} B/send, "
            f"{(io1['syscw'] - io0['syscw']) / n:.1f} write calls/send")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for k in (False, True):
        print(measure(count, k))
