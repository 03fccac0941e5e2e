"""The cost of the start-up ``PRAGMA quick_check`` (issue 14; docs/durability.md).

    .venv/bin/python benchmarks/quick_check.py [N:BYTES ...]   # default 100000:100 100000:4096 1000000:100

For each ``N:BYTES``: a fresh broker (``benchmarks/servers.py``), N messages of BYTES content
queued to one mailbox, the broker stopped, then ``PRAGMA quick_check`` on its database 3 times
(page cache warm); prints the database size and the best-worst time in ms.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.memory import _fill
from benchmarks.servers import ParrotServer


def measure(n: int, size: int) -> str:
    """One line: ``n`` x ``size`` B, the database's MiB and quick_check's best-worst ms of 3."""
    with ParrotServer() as srv:
        _fill(srv.sock, "heap", n, "x" * size)
        assert srv.proc is not None
        srv.proc.terminate()
        srv.proc.wait(60)
        db = os.path.join(srv.dir, "state", "parrot.db")
        times = []
        for _ in range(3):
            con = sqlite3.connect(db)
            t0 = time.perf_counter()
            rows = con.execute("PRAGMA quick_check").fetchall()
            times.append(time.perf_counter() - t0)
            con.close()
            assert rows == [("ok",)], rows
        mib = os.path.getsize(db) / 2**20
        return f"{n:,} x {size} B: db {mib:.0f} MiB, quick_check {min(times) * 1e3:.0f}-{max(times) * 1e3:.0f} ms"


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["100000:100", "100000:4096", "1000000:100"]:
        n, size = (int(x) for x in arg.split(":"))
        print(measure(n, size), flush=True)
