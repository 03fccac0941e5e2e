"""Helpers for the trio-shell tests: the harness record and raw-socket helpers."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field

import trio

from parrot_ipc.core import Broker
from parrot_ipc.shell.server import BrokerServer


@dataclass
class Harness:
    path: str
    server: BrokerServer
    broker: Broker
    audit: list[tuple[str, dict]]
    #: uids to report for the next accepted connections instead of the real SO_PEERCRED one
    fake_uids: list[int] = field(default_factory=list)
    unlinked: list[bool] = field(default_factory=list)


def raw_connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


async def raw(path: str) -> trio.SocketStream:
    return await trio.open_unix_socket(path)


async def read_lines(stream: trio.SocketStream, n: int, timeout_s: float = 5) -> list[dict]:
    buf = b""
    with trio.fail_after(timeout_s):
        while buf.count(b"\n") < n:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            buf += chunk
    return [json.loads(line) for line in buf.split(b"\n") if line]


