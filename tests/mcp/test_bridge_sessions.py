"""Sessions of one owner don't fight (issue 13, finding 2), with real ``parrot-ipc mcp``
processes driven by the MCP SDK client against a real broker.

`claude mcp list` starts a bridge with the same ``--instance`` as the live one, initializes,
lists tools and exits; a second editor window starts a second live bridge with the same name.
Neither may break the first bridge: its ``send`` and ``check_messages`` keep working throughout.
"""

from __future__ import annotations

import json

import trio
from mcp.client.session import ClientSession
from test_mcp_bridge import TIMEOUT_S, Setup, _start, bridge, call, setup, text

from parrot_ipc import Client

__all__ = ["setup"]  # the fixture, re-used from test_mcp_bridge


async def _works(session: ClientSession, me: str, note: str) -> None:
    """The bridge ``me`` sends itself ``note`` and reads it back."""
    sent = await call(session, "send", {"to": me, "content": note})
    assert not sent.is_error, text(sent)
    got = await call(session, "check_messages", {})
    assert not got.is_error, text(got)
    assert [m["content"] for m in got.structured_content["messages"]] == [note], text(got)


def _issued(log: str, instance: str) -> int:
    """How many ``token_issued`` audit events the broker log has for ``instance``."""
    n = 0
    for line in log.splitlines():
        if '"token_issued"' in line:
            start = line.index("{")
            if json.loads(line[start:]).get("instance") == instance:
                n += 1
    return n


async def test_a_health_check_and_a_second_bridge_never_break_the_first(broker, setup: Setup) -> None:
    b = _start(broker, setup)
    async with bridge(setup, b.socket_path, "claude-1") as (first, _):
        await _works(first, "claude-1", "before anything")
        # A health check: initialize, tools/list, exit. It claims nothing.
        async with bridge(setup, b.socket_path, "claude-1") as (health, init):
            with trio.fail_after(TIMEOUT_S):
                assert len((await health.list_tools()).tools) == 6
            assert "your instance id is claude-1" in (init.instructions or "")
        await _works(first, "claude-1", "after the health check")
        assert _issued(b.log_text(), "claude-1") == 1
        # A second live bridge configured with the same name becomes claude-1-2 and says so.
        async with bridge(setup, b.socket_path, "claude-1") as (second, _):
            me2 = await call(second, "whoami", {})
            assert not me2.is_error, text(me2)
            assert me2.structured_content["instance_id"] == "claude-1-2"
            assert me2.structured_content["configured_instance_id"] == "claude-1"
            assert "already uses the name claude-1, so you are claude-1-2" in text(me2)
            assert "configured as claude-1" in text(me2)
            await _works(first, "claude-1", "while a second bridge runs")
            to_first = await call(second, "send", {"to": "claude-1", "content": "from the second window"})
            assert not to_first.is_error and to_first.structured_content["to"] == "claude-1"
            got = await call(first, "check_messages", {})
            assert "from: claude-1-2" in text(got) and "from the second window" in text(got)
            again = await call(second, "whoami", {})  # stable for that process, no more notes
            assert again.structured_content["instance_id"] == "claude-1-2" and "Note:" not in text(again)
            await _works(second, "claude-1-2", "the second one works too")
        await _works(first, "claude-1", "after the second bridge exited")
        me1 = await call(first, "whoami", {})
        assert me1.structured_content["instance_id"] == "claude-1" and "Note:" not in text(me1)
    assert "token_revoked" not in setup.stderr_text()
    assert '"why":"replaced"' not in b.log_text()


async def test_a_bridge_whose_session_is_taken_over_says_so_and_claims_back_when_the_holder_leaves(
        broker, setup: Setup) -> None:
    b = _start(broker, setup)
    async with bridge(setup, b.socket_path, "claude-1") as (first, _):
        await _works(first, "claude-1", "mine")
        with Client(b.socket_path, timeout_s=TIMEOUT_S) as other:  # takes claude-1 over, v1-style
            other.get_token("claude-1")
            res = await call(first, "send", {"to": "claude-1", "content": "x"})
            assert res.is_error
            assert "was taken over by another process of your user" in text(res)
            assert "takes claude-1 back by itself once that process has disconnected" in text(res)
            still = await call(first, "check_messages", {})  # no ping-pong while the holder is there
            assert still.is_error and "taken over" in text(still)
            assert other.whoami().instance_id == "claude-1"
        # The broker sees the holder's disconnect asynchronously (its EOF): poll, do not race it.
        back = await call(first, "whoami", {})
        with trio.move_on_after(TIMEOUT_S):
            while back.is_error and "taken over" in text(back):
                await trio.sleep(0.05)
                back = await call(first, "whoami", {})
        assert not back.is_error, text(back)
        assert "you hold claude-1 again" in text(back)
        await _works(first, "claude-1", "mine again")
