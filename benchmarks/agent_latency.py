"""How fast mail reaches the model (issue 15): a ``parrot-ipc hook`` run per event, and a send
until its Claude Code channel notification is read by the client.

Usage: ``.venv/bin/python benchmarks/agent_latency.py [--runs N]``. It starts a broker
(``parrot-ipc serve``) and a bridge (``parrot-ipc mcp`` under the MCP SDK's stdio client, push
on) in a temp dir, this process playing the agent, and prints the median and the worst of N
runs, in milliseconds: a hook with mail (``UserPromptSubmit``), a hook with no bridge at all,
and send -> ``notifications/claude/channel``. Figures: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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

PROMPT = {"session_id": "s", "transcript_path": "/t", "cwd": "/", "hook_event_name": "UserPromptSubmit",
          "prompt": "hi"}


def _hook(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "parrot_ipc", "hook", "claude"], input=json.dumps(PROMPT),
                   capture_output=True, text=True, env=env, check=True)
    return (time.perf_counter() - t0) * 1000


def _line(name: str, ms: list[float]) -> str:
    return f"{name:<40} median {statistics.median(ms):7.1f} ms   worst {max(ms):7.1f} ms   (n={len(ms)})"


@asynccontextmanager
async def _bridge(sock: str, name: str, env: dict[str, str]) -> AsyncIterator[trio.MemoryReceiveChannel[float]]:
    """A bridge under the SDK's client; yields the arrival times of its channel notifications."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "parrot_ipc", "mcp", "--instance", name,
                                                                 "--socket", sock], env=env)
    got, seen = trio.open_memory_channel[float](1000)
    async with stdio_client(params, errlog=open(os.devnull, "w")) as (raw, write):
        fwd, fwd_recv = anyio.create_memory_object_stream[Any](16)

        async def relay() -> None:
            async for item in raw:
                msg = getattr(item, "message", None)
                if isinstance(msg, types.JSONRPCNotification) and msg.method == "notifications/claude/channel":
                    got.send_nowait(time.perf_counter())
                else:
                    await fwd.send(item)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay)
            async with ClientSession(fwd_recv, write) as session:
                await session.initialize()
                yield seen
            nursery.cancel_scope.cancel()


async def run(runs: int) -> None:
    """Measure and print (see the module's docstring)."""
    d = Path(tempfile.mkdtemp(prefix="pal-"))
    (d / "run").mkdir(mode=0o700)
    sock = str(d / "run" / "mcp.sock")
    broker = subprocess.Popen([sys.executable, "-m", "parrot_ipc", "serve", "--socket", sock],
                              stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARROT_")} | {"XDG_RUNTIME_DIR": str(d)}
    try:
        while not os.path.exists(sock):
            await trio.sleep(0.05)
        print(_line("hook, no bridge (exit 0, empty)", [_hook(env | {"XDG_RUNTIME_DIR": str(d / "none")})
                                                         for _ in range(runs)]))
        with Client(sock) as alice:
            alice.get_token("alice")
            async with _bridge(sock, "a", env):
                await trio.sleep(0.5)  # the hook socket is bound after initialize
                hooks = []
                for i in range(runs):
                    alice.send("a", f"h{i}")
                    hooks.append(_hook(env))
                print(_line("hook UserPromptSubmit with 1 message", hooks))
            async with _bridge(sock, "b", env | {"PARROT_IPC_PUSH_PER_MINUTE": "1000"}) as seen:
                lat = []
                for i in range(runs):
                    t0 = time.perf_counter()
                    alice.send("b", f"m{i}")
                    lat.append((await seen.receive() - t0) * 1000)
                print(_line("send -> channel notification read", lat))
    finally:
        broker.terminate()
        broker.wait()


def main() -> None:
    """Parse ``--runs`` and run."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    trio.run(run, ap.parse_args().runs)


if __name__ == "__main__":
    main()
