"""Issue 13, finding 3, in the shell: the pidfd pinned at accept lives as long as a connection
whose rule pins the executable, and is closed at accept for one whose rule does not (one
descriptor per connection saved). The real ``identify_socket_stream`` runs here."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from shell_harness import raw, read_lines

from parrot_ipc.core import Broker, PeerCredentials, PeerRule, RulePolicy
from parrot_ipc.os import paths as os_paths
from parrot_ipc.shell.clock import trio_wall_clock
from parrot_ipc.shell.server import BrokerServer, identify_socket_stream, socket_listener

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n'


async def _serve(tmp_path: Path, nursery: trio.Nursery, rule: PeerRule) -> tuple[str, list[PeerCredentials]]:
    run = tmp_path / "run"
    path = str(run / "mcp.sock")
    os_paths.ensure_runtime_dir(str(run))
    listener, _ = os_paths.bind_listener(path)
    seen: list[PeerCredentials] = []

    def identify(stream: trio.abc.Stream) -> PeerCredentials:
        cred = identify_socket_stream(stream)
        seen.append(cred)
        return cred

    clock = trio_wall_clock()
    broker = Broker(policy=RulePolicy([rule]), clock=clock)
    server = BrokerServer(broker, socket_listener(listener), identify=identify, clock=clock)
    await nursery.start(server.serve)
    return path, seen


@pytest.mark.parametrize(("rule", "kept"), [
    (PeerRule("pinned", uids=frozenset({os.geteuid()}), executables=("/*",)), True),
    (PeerRule("process", uids=frozenset({os.geteuid()}), bind="process"), True),
    (PeerRule("uid-only", uids=frozenset({os.geteuid()})), False),
], ids=["executables", "bind_process", "uid_only"])
async def test_the_pinned_pidfd_lives_exactly_as_long_as_it_is_needed(
        tmp_path: Path, nursery: trio.Nursery, rule: PeerRule, kept: bool) -> None:
    path, seen = await _serve(tmp_path, nursery, rule)
    stream = await raw(path)
    await stream.send_all(PING)
    assert (await read_lines(stream, 1))[0]["result"] == "pong"
    (cred,) = seen
    assert cred.process is not None
    probe: Callable[[], str | None] = cred.process.exe
    assert (probe() is not None) is kept
    await stream.aclose()
    with trio.fail_after(5):
        while probe() is not None:
            await trio.sleep(0.01)
