"""A real broker process, stopped cleanly (SIGTERM) and started again on the same state dir:
queues, leases, sessions, instances, forwards and idempotency keys are all still there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parrot_ipc import Client, ParrotError

from .conftest import BrokerProcess


def test_state_survives_a_clean_restart(broker_proc: BrokerProcess) -> None:
    s = broker_proc.socket
    broker_proc.start()
    with Client(s) as a, Client(s) as b, Client(s) as c:
        ta = a.get_token("alice").token
        tb = b.get_token("bob").token
        c.get_token("carol")
        c.rename("caroline")
        ids = [a.send("bob", f"m{i}", idempotency_key=f"k{i}").id for i in range(4)]
        a.send("nobody-yet", "for later")
        leased = b.receive(max=1)  # m0 is leased (lease_s = 2 in the fixture's config)
        assert [m.content for m in leased] == ["m0"]
        before = {i.instance_id: i for i in a.list_instances()}
    assert broker_proc.stop() == 0

    broker_proc.start()
    with Client(s) as a, Client(s) as b, Client(s) as x:
        assert a.authenticate(ta).instance_id == "alice"  # the old token works after the restart
        assert b.authenticate(tb).instance_id == "bob"
        with pytest.raises(ParrotError) as exc:
            x.authenticate("not-a-token")
        assert exc.value.code == -32001
        after = {i.instance_id: i for i in a.list_instances()}
        assert set(after) == set(before) == {"alice", "bob", "caroline"}
        assert after["bob"].queued == 4
        # idempotency keys: the same key gives the same id, and queues nothing new
        assert a.send("bob", "m1", idempotency_key="k1").id == ids[1]
        # forwards: mail to the old name still reaches the renamed instance
        assert a.send("carol", "hello").status == "forwarded"
        # the queue, FIFO; m0 is still leased, and comes back when its lease runs out
        assert [m.content for m in b.receive()] == ["m1", "m2", "m3"]
        again = b.receive(wait_s=5)
        assert [m.content for m in again] == ["m0"]
        assert b.ack([m.id for m in again]) == 1
        new_id = a.send("bob", "after restart").id
        assert new_id > max(ids)  # ids keep sorting by arrival across the restart
        with Client(s) as n:
            n.get_token("nobody-yet")
            assert [m.content for m in n.receive()] == ["for later"]
    assert broker_proc.stop() == 0


def _serve(tmp_path: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parrot_ipc", "serve", "--socket", str(tmp_path / "run2" / "mcp.sock"),
         "--state-dir", str(state)],
        capture_output=True, text=True, timeout=30)


def test_refusals_are_one_line_and_non_zero(broker_proc: BrokerProcess, tmp_path: Path) -> None:
    broker_proc.start()
    res = _serve(tmp_path, Path(broker_proc.state_dir))  # same state, other socket: locked
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another broker" in lines[0] and "Traceback" not in res.stderr
    broker_proc.stop()

    bad = tmp_path / "bad"
    bad.mkdir(mode=0o700)
    (bad / "parrot.db").write_bytes(b"\x00garbage" * 512)
    os.chmod(bad / "parrot.db", 0o600)
    res = _serve(tmp_path, bad)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad / "parrot.db") in lines[0] and "corrupt" in lines[0], res.stderr
    assert not (tmp_path / "run2" / "mcp.sock").exists()


def test_memory_store_keeps_nothing(broker_proc: BrokerProcess) -> None:
    broker_proc.extra = ["--store", "memory"]
    broker_proc.start()
    with Client(broker_proc.socket) as a:
        a.get_token("alice")
        a.send("bob", "gone at exit")
    broker_proc.stop()
    assert not Path(broker_proc.state_dir).exists()
    broker_proc.start()
    with Client(broker_proc.socket) as a:
        a.get_token("bob")
        assert a.receive() == []
    broker_proc.stop()
