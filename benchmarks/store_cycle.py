"""One delivered message through the SQLite store alone, in microseconds (issue 14).

    .venv/bin/python benchmarks/store_cycle.py [N]        # default N = 20000
    PYTHONPATH=/path/to/other/src .venv/bin/python benchmarks/store_cycle.py   # another tree

No broker, no socket: the store calls that a pushed message costs, in the order the broker makes
them: ``enqueue`` (100 B), ``lease`` (the push), a commit (``take_pending`` + ``apply_ops``),
``ack``, a commit. Each commit is its own transaction (the worst case for group commit), in a
temporary directory. After 2,000 warm-up cycles, prints the mean over N cycles. Used to choose
how leases are stored (docs/durability.md, "What is in memory").
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import time

from parrot_ipc.core.protocol import Message
from parrot_ipc.store.base import StoredMessage
from parrot_ipc.store.sqlite import SqliteStore

NOW = 1.8e9


def main() -> None:
    """Run the cycles and print the mean per message, in microseconds."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    charged = "payer" in inspect.signature(StoredMessage).parameters  # trees before issue 14 have none
    with tempfile.TemporaryDirectory() as d:
        s = SqliteStore.open(d + "/state", clock=lambda: NOW)

        def cycle(i: int) -> None:
            m = Message(id=f"{i:018x}", from_="a", to="b", content="x" * 100, sent_at="2027-01-15T08:00:00.000Z")
            s.enqueue(StoredMessage(m, "b", 100, payer=1000) if charged else StoredMessage(m, "b", 100))
            got = s.lease("b", 32, NOW + 60)
            s.apply_ops(s.take_pending()[0])
            s.ack("b", [x.id for x in got])
            s.apply_ops(s.take_pending()[0])

        for i in range(1, 2001):
            cycle(i)
        t0 = time.perf_counter()
        for i in range(10_001, 10_001 + n):
            cycle(i)
        per_us = (time.perf_counter() - t0) / n * 1e6
        s.close()
    print(f"store cycle (enqueue, lease, commit, ack, commit): {per_us:.1f} us per message over {n}")


if __name__ == "__main__":
    main()
