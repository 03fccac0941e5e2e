"""Group commit in the trio shell, with a real SqliteStore: shared commits, no response or push
before its commit, and a failed commit answered -32603 while the broker keeps serving."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from parrot_ipc import AsyncClient, ParrotError
from parrot_ipc.core import Broker, BrokerConfig, DefaultPolicy
from parrot_ipc.os import paths as os_paths
from parrot_ipc.shell.clock import trio_wall_clock
from parrot_ipc.shell.server import BrokerServer, identify_socket_stream, socket_listener
from parrot_ipc.store.ops import PutMessage
from parrot_ipc.store.sqlite import SqliteStore


@dataclass
class Rig:
    path: str
    store: SqliteStore
    server: BrokerServer
    commits: list[int] = field(default_factory=list)  # ops per successful commit
    committed_ids: set[str] = field(default_factory=set)
    fail: bool = False


@pytest.fixture
async def rig(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Rig]:
    run = tmp_path / "run"
    path = str(run / "mcp.sock")
    os_paths.ensure_runtime_dir(str(run))
    listener, _ = os_paths.bind_listener(path)
    store = SqliteStore.open(str(tmp_path / "state"))
    clock = trio_wall_clock()
    broker = Broker(config=BrokerConfig(), policy=DefaultPolicy(os.geteuid()), store=store, clock=clock,
                    audit=lambda e, f: None)
    rig = Rig(path, store, None)  # type: ignore[arg-type]
    real_apply = store.apply_ops

    def apply_ops(ops: list[Any]) -> None:
        if rig.fail:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        real_apply(ops)
        rig.commits.append(len(ops))
        rig.committed_ids.update(op.id for op in ops if isinstance(op, PutMessage))

    store.apply_ops = apply_ops  # type: ignore[method-assign]
    rig.server = BrokerServer(broker, socket_listener(listener), identify=identify_socket_stream, clock=clock)
    await nursery.start(rig.server.serve)
    yield rig
    rig.server.shutdown()
    listener.close()


async def test_concurrent_senders_share_commits_and_no_response_precedes_its_commit(rig: Rig) -> None:
    senders, per_sender = 16, 25
    async with AsyncClient(rig.path) as r:
        await r.get_token("sink")
    early: list[str] = []

    async def sender(i: int) -> None:
        async with AsyncClient(rig.path) as c:
            await c.get_token(f"s{i}")
            for j in range(per_sender):
                res = await c.send("sink", f"{i}/{j}", idempotency_key=f"{i}/{j}")
                if res.id not in rig.committed_ids:
                    early.append(res.id)

    async with trio.open_nursery() as n:
        for i in range(senders):
            n.start_soon(sender, i)
    total = senders * per_sender
    assert not early, f"{len(early)} send response(s) left before their commit"
    assert len(rig.committed_ids) == total
    sends_per_commit = total / len(rig.commits)
    assert sends_per_commit > 2, f"commits were not shared: {len(rig.commits)} commits for {total} sends"


async def test_pushes_wait_for_their_commit(rig: Rig) -> None:
    async with AsyncClient(rig.path) as sub, AsyncClient(rig.path) as snd:
        await sub.get_token("sub")
        await snd.get_token("snd")
        await sub.subscribe()
        for i in range(20):
            await snd.send("sub", f"m{i}")
        got = []
        with trio.fail_after(5):
            async for m in sub.messages():
                assert m.id in rig.committed_ids
                got.append(m.content)
                if len(got) == 20:
                    break
        assert got == [f"m{i}" for i in range(20)]


async def test_a_failed_commit_answers_32603_and_the_broker_keeps_serving(rig: Rig) -> None:
    async with AsyncClient(rig.path) as a, AsyncClient(rig.path) as b:
        await a.get_token("alice")
        await b.get_token("bob")
        rig.fail = True
        with pytest.raises(ParrotError) as exc:
            await a.send("bob", "during the outage", idempotency_key="k1")
        assert (exc.value.code, exc.value.reason) == (-32603, "store_write_failed")
        assert await a.ping() == "pong"  # no write needed: answered at once
        rig.fail = False
        # the retry carries the failed batch too; the same key returns the same message
        again = await a.send("bob", "during the outage", idempotency_key="k1")
        assert again.id in rig.committed_ids
        msgs = await b.receive()
        assert [m.content for m in msgs] == ["during the outage"]


@pytest.mark.parametrize("durable", [True, False])
async def test_a_push_never_overtakes_the_response_that_caused_it(
        rig: Rig, tmp_path: Path, nursery: trio.Nursery, durable: bool) -> None:
    path = rig.path
    if not durable:  # the same check on a memory-store server
        run = tmp_path / "run-mem"
        path = str(run / "mcp.sock")
        os_paths.ensure_runtime_dir(str(run))
        listener, _ = os_paths.bind_listener(path)
        clock = trio_wall_clock()
        broker = Broker(config=BrokerConfig(), policy=DefaultPolicy(os.geteuid()), clock=clock,
                        audit=lambda e, f: None)
        server = BrokerServer(broker, socket_listener(listener), identify=identify_socket_stream, clock=clock)
        await nursery.start(server.serve)
    async with AsyncClient(path) as a:
        token = (await a.get_token("bob")).token
        await a.get_token("alice")
        for i in range(3):
            await a.send("bob", f"m{i}")
    stream = await trio.open_unix_socket(path)
    auth = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "authenticate", "params": {"token": token}})
    sub = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "subscribe"})
    await stream.send_all(f"{auth}\n{sub}\n".encode())
    buf = b""
    with trio.fail_after(5):
        while buf.count(b"\n") < 5:
            buf += await stream.receive_some(65536)
    lines = [json.loads(x) for x in buf.split(b"\n") if x]
    assert [x.get("id") for x in lines[:2]] == [1, 2]
    assert [x["params"]["content"] for x in lines[2:]] == ["m0", "m1", "m2"]
    await stream.aclose()
    if not durable:
        server.shutdown()


async def test_wal_checkpoints_run_in_the_worker_thread_never_on_the_event_loop(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import parrot_ipc.store.sqlite as store_sqlite

    monkeypatch.setattr(store_sqlite, "CHECKPOINT_EVERY_COMMITS", 5)
    assert rig.store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    loop_thread = threading.get_ident()
    ran_in: list[int] = []
    real = rig.store.checkpoint

    def checkpoint() -> None:
        ran_in.append(threading.get_ident())
        real()

    rig.store.checkpoint = checkpoint  # type: ignore[method-assign]
    async with AsyncClient(rig.path) as c:
        await c.get_token("sink")
        for i in range(30):  # sequential sends: small batches, committed on the event loop
            await c.send("sink", f"m{i}")
        with trio.fail_after(5):
            while len(ran_in) < 2:
                await trio.sleep(0.01)
        assert await c.ping() == "pong"
    assert loop_thread not in ran_in


class _FakeJournal:
    """A Journaled store in miniature: ops are ints, apply_ops appends them to ``disk``."""

    def __init__(self, written_seq: int = 0) -> None:
        self.written_seq = written_seq
        self.pending: list[Any] = []
        self.disk: list[Any] = []
        self.fail = False

    def write(self, op: int) -> None:
        self.pending.append(op)
        self.written_seq += 1

    def take_pending(self) -> tuple[list[Any], int]:
        ops, self.pending = self.pending, []
        return ops, self.written_seq

    def requeue(self, ops: list[Any], keep_lease: Any = None) -> None:
        self.pending[:0] = ops

    def apply_ops(self, ops: list[Any]) -> None:
        if self.fail:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        self.disk.extend(ops)

    def checkpoint_due(self) -> bool:
        return False

    def checkpoint(self) -> None:
        pass


def test_the_committer_owns_durable_seq_from_the_store_written_seq_on() -> None:
    from parrot_ipc.store.committer import Committer

    j = _FakeJournal(written_seq=7)  # what was loaded from disk is durable
    c = Committer(j)
    assert (c.durable_seq, c.backlog, c.is_durable(7)) == (7, 0, True)
    j.write(1)
    j.write(2)
    assert (c.backlog, c.is_durable(9)) == (2, False)
    assert c.commit() is True
    assert (j.disk, c.durable_seq, c.backlog, c.healthy) == ([1, 2], 9, 0, True)


def test_a_failed_commit_is_counted_requeued_and_written_by_the_next_one() -> None:
    from parrot_ipc.store.committer import Committer

    j = _FakeJournal()
    c = Committer(j)
    j.write(1)
    before = c.failures
    j.fail = True
    assert c.commit() is False
    assert (c.failures, c.failed_through, c.healthy, c.durable_seq) == (1, 1, False, 0)
    assert c.failed_since(before, 1) and not c.failed_since(c.failures, 1)
    assert j.pending == [1]  # put back in front
    j.write(2)
    j.fail = False
    assert c.commit() is True
    assert (j.disk, c.durable_seq, c.healthy) == ([1, 2], 2, True)
