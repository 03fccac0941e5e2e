"""Fixtures for the trio-shell tests: an in-process BrokerServer on a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import cast

import pytest
import trio
from shell_harness import Harness

from parrot_ipc.core import Broker, BrokerConfig, DefaultPolicy, PeerCredentials
from parrot_ipc.os import paths as os_paths
from parrot_ipc.os import peer as os_peer
from parrot_ipc.shell.clock import trio_wall_clock
from parrot_ipc.shell.server import BrokerServer, socket_listener


@pytest.fixture
def make_harness(tmp_path: Path, nursery: trio.Nursery) -> Callable[..., object]:
    async def make(broker_uid: int | None = None, **cfg: object) -> Harness:
        run = tmp_path / "run"
        path = str(run / "mcp.sock")
        os_paths.ensure_runtime_dir(str(run))
        listener, inode = os_paths.bind_listener(path)
        audit: list[tuple[str, dict]] = []
        clock = trio_wall_clock()
        broker = Broker(
            config=BrokerConfig(**cfg),  # type: ignore[arg-type]
            policy=DefaultPolicy(os.geteuid() if broker_uid is None else broker_uid),
            clock=clock,
            audit=lambda e, f: audit.append((e, f)),
        )
        h = Harness(path, None, broker, audit)  # type: ignore[arg-type]

        def identify(stream: trio.abc.Stream) -> PeerCredentials:
            assert isinstance(stream, trio.SocketStream)
            real = os_peer.peer_credentials(cast(socket.socket, stream.socket))
            if h.fake_uids:
                return PeerCredentials(real.pid, h.fake_uids.pop(0), real.gid)
            return real

        def closed() -> None:
            os_paths.remove_socket(path, inode)
            h.unlinked.append(True)

        h.server = BrokerServer(broker, socket_listener(listener), identify=identify, clock=clock, on_listener_closed=closed)
        await nursery.start(h.server.serve)
        return h

    return make


@pytest.fixture
async def harness(make_harness: Callable[..., object]) -> AsyncIterator[Harness]:
    h = await make_harness()  # type: ignore[misc]
    yield h
    h.server.shutdown()


