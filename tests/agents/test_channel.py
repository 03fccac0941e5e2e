"""Claude Code channels from ``parrot-ipc mcp``: a client from the MCP SDK that advertises
nothing special gets each message as ``notifications/claude/channel`` with no tool call, the
message is acked after the write, and a restarted bridge does not push it again.

The test taps the raw JSON-RPC stream between the SDK's stdio transport and its
:class:`ClientSession` to see the notifications (the SDK has no handler for this method).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import trio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from parrot_ipc import Client
from parrot_ipc.client.mcp_channel import CHANNEL_METHOD, PUSH_RATE_ENV

TIMEOUT_S = 30.0


class Tap:
    """The channel notifications seen so far, and a way to wait for the next."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = trio.Event()

    def add(self, params: dict[str, Any]) -> None:
        self.events.append(params)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        with trio.fail_after(timeout_s):
            while len(self.events) < count:
                await self._changed.wait()
        return self.events


@asynccontextmanager
async def bridge(work: Path, sock: str, instance: str, rate: str | None = "20") -> AsyncIterator[tuple[ClientSession, Tap, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARROT_")}
    env |= {"HOME": str(work), "XDG_RUNTIME_DIR": str(work)} | ({} if rate is None else {PUSH_RATE_ENV: rate})
    params = StdioServerParameters(command=sys.executable, args=["-m", "parrot_ipc", "mcp", "--instance", instance,
                                                                 "--socket", sock], env=env, cwd=str(work))
    tap = Tap()
    with (work / f"bridge-{instance}.stderr").open("a") as errlog:
        async with stdio_client(params, errlog=errlog) as (raw_read, write):
            fwd_send, fwd_recv = anyio.create_memory_object_stream[Any](16)

            async def relay() -> None:
                async with fwd_send:
                    async for item in raw_read:
                        msg = getattr(item, "message", None)
                        if isinstance(msg, types.JSONRPCNotification) and msg.method == CHANNEL_METHOD:
                            tap.add(msg.params or {})
                            continue
                        await fwd_send.send(item)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay)
                async with ClientSession(fwd_recv, write) as session:
                    with trio.fail_after(TIMEOUT_S):
                        init = await session.initialize()
                    yield session, tap, init
                nursery.cancel_scope.cancel()


def _queued(sock: str, name: str) -> int:
    with Client(sock) as c:
        c.get_token("observer")
        return {r.instance_id: r.queued for r in c.list_instances()}.get(name, 0)


async def test_a_sent_message_arrives_as_a_channel_notification_within_1_s(broker, work: Path) -> None:
    b = broker()
    async with bridge(work, b.socket_path, "claude-1") as (session, tap, init):
        assert init.capabilities.experimental == {"claude/channel": {}}
        assert "<channel" in (init.instructions or "") and "reply_to" in (init.instructions or "")
        with Client(b.socket_path) as alice:
            alice.get_token("alice")
            first = alice.send("claude-1", "hello from alice").id
            t0 = trio.current_time()
            events = await tap.wait_for(1, 1.0)  # no tool call: it comes by itself
            assert trio.current_time() - t0 < 1.0
            alice.send("claude-1", "and a reply", reply_to=first)
            events = await tap.wait_for(2, 1.0)
        ev = events[0]
        assert "hello from alice" in ev["content"] and "untrusted data" in ev["content"]
        assert ev["meta"] == {"from": "alice", "id": first, "sent_at": ev["meta"]["sent_at"]}
        assert all(isinstance(v, str) for v in ev["meta"].values())
        assert events[1]["meta"]["reply_to"] == first
        with trio.fail_after(2.0):  # the pusher's long poll has its own connection: tools never wait for it
            assert not (await session.call_tool("whoami", {})).is_error
        with trio.fail_after(TIMEOUT_S):
            while _queued(b.socket_path, "claude-1"):  # acked after the write
                await trio.sleep(0.05)


async def test_a_pushed_message_is_not_pushed_again_after_a_bridge_restart(broker, work: Path) -> None:
    b = broker()
    with Client(b.socket_path) as alice:
        alice.get_token("alice")
        async with bridge(work, b.socket_path, "claude-1") as (_, tap, _i):
            alice.send("claude-1", "only once")
            await tap.wait_for(1, 5.0)
            with trio.fail_after(TIMEOUT_S):
                while _queued(b.socket_path, "claude-1"):
                    await trio.sleep(0.05)
        with trio.fail_after(TIMEOUT_S):  # the old bridge is gone (else the new one is claude-1-2)
            while any(r.online for r in alice.list_instances() if r.instance_id == "claude-1"):
                await trio.sleep(0.05)
        async with bridge(work, b.socket_path, "claude-1") as (_, tap2, _i):
            alice.send("claude-1", "second")
            events = await tap2.wait_for(1, 5.0)
            assert [e["content"].splitlines()[-1] for e in events] == ["second"]


async def test_past_the_rate_the_rest_is_summarised(broker, work: Path) -> None:
    b = broker()
    with Client(b.socket_path) as alice:
        alice.get_token("alice")
        for i in range(5):
            alice.send("claude-1", f"m{i}")
        async with bridge(work, b.socket_path, "claude-1", rate="2") as (session, tap, _i):
            events = await tap.wait_for(3, 5.0)
            assert [e["content"].splitlines()[-1] for e in events[:2]] == ["m0", "m1"]
            assert events[2]["content"] == "3 more waiting: call check_messages"
            res = await session.call_tool("check_messages", {})
            block = res.content[0]
            assert isinstance(block, types.TextContent) and "m2" in block.text and "m4" in block.text


async def test_push_is_off_by_default(broker, work: Path) -> None:
    b = broker()
    async with bridge(work, b.socket_path, "gemini-1", rate=None) as (session, tap, _init):
        with Client(b.socket_path) as alice:
            alice.get_token("alice")
            alice.send("gemini-1", "kept for check_messages")
        res = await session.call_tool("check_messages", {})
        block = res.content[0]
        assert isinstance(block, types.TextContent) and "kept for check_messages" in block.text
        assert tap.events == []
