"""Root only: a real full disk under the state directory (issue 14, "Disk full").

The state directory is a small tmpfs (``mount -t tmpfs -o size=...``, unmounted in teardown
even when the test fails). A filler file takes the rest of its space, so SQLite's next WAL
append gets ENOSPC (SQLITE_FULL). Then: every ``send`` is answered -32603
``store_write_failed`` and a ``receive`` leases nothing that outlives its failed commit (the
messages are receivable at once when space returns, without waiting ``lease_s`` = 60 s); once
the filler is removed, the same broker, without a restart, stores the retried sends (same
idempotency keys: nothing doubled) and delivers every message once (nothing lost), also after a
restart. No fixed sleeps: the broker's clock is never waited on.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.store.conftest import BrokerProcess

from parrot_ipc import Client, ParrotError

pytestmark = pytest.mark.root


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size):
                    pass
    st = os.statvfs(disk)
    assert st.f_bavail == 0
    return filler


def _store_failed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    with pytest.raises(ParrotError) as exc:
        call()
    assert (exc.value.code, exc.value.reason) == (-32603, "store_write_failed")
    return time.perf_counter() - t0


def test_a_full_disk_fails_fast_leases_nothing_and_recovers_on_its_own(
        small_disk: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "broker.toml"
    cfg.write_text("[server]\nlease_s = 60.0\n")
    bp = BrokerProcess(str(tmp_path / "run" / "mcp.sock"), str(small_disk / "state"), str(cfg),
                       tmp_path / "broker.log")
    bp.start()
    try:
        with Client(bp.socket) as a, Client(bp.socket) as b:
            a.get_token("alice")
            b.get_token("bob")
            before = [a.send("bob", f"before {i}", idempotency_key=f"b{i}").id for i in range(5)]
            filler = _fill(small_disk)
            waits = [_store_failed(lambda i=i: a.send("bob", f"during {i}", idempotency_key=f"d{i}"))
                     for i in range(10)]
            print(f"send on a full disk answered -32603 in {1000 * max(waits):.1f} ms at most "
                  f"(median {1000 * sorted(waits)[len(waits) // 2]:.1f} ms)")
            _store_failed(lambda: b.receive(max=100))  # its lease must not survive the failed commit
            assert a.ping() == "pong"  # reads are answered meanwhile
            filler.unlink()
            # the same broker, no restart: the retries store each message once
            during = [a.send("bob", f"during {i}", idempotency_key=f"d{i}").id for i in range(10)]
            got = b.receive(max=100)  # at once: nothing is leased until lease_s runs out
            assert [m.content for m in got] == [f"before {i}" for i in range(5)] + [f"during {i}" for i in range(10)]
            assert [m.id for m in got] == before + during
            b.ack([m.id for m in got])
        assert bp.stop() == 0
        bp.start()
        with Client(bp.socket) as b:
            b.get_token("bob")
            assert b.receive(max=100) == []  # nothing doubled across a restart either
        assert bp.stop() == 0
    finally:
        if bp.proc is not None:
            bp.kill()
