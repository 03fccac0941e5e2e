"""``reply_to`` on ``send`` (issue 15): stored with the message and shown by ``receive``, on
both stores, across a close and reopen of the durable one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parrot_ipc.core import Broker
from parrot_ipc.store.sqlite import SqliteStore

from .test_bounds import Clock, _broker, _call, _client


def _recv(b: Broker, name: str) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = _call(b, _client(b, name), "receive")["result"]["messages"]
    return msgs


def test_reply_to_round_trips_through_a_restart_of_the_durable_store(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    s = SqliteStore.open(state)
    b = _broker(s, Clock())
    a = _client(b, "alice")
    first = _call(b, a, "send", to="bob", content="question", data={"k": 1})["result"]["id"]
    _call(b, a, "send", to="bob", content="answer", reply_to=first)
    _call(b, a, "send", to="bob", content="with both", data={"k": 2}, reply_to="m-0")
    s.close()
    s2 = SqliteStore.open(state)
    try:
        msgs = _recv(_broker(s2, Clock()), "bob")
    finally:
        s2.close()
    assert [(m["content"], m.get("data"), m.get("reply_to")) for m in msgs] == [
        ("question", {"k": 1}, None), ("answer", None, first), ("with both", {"k": 2}, "m-0")]
    assert "reply_to" not in msgs[0]  # left out when unset: old readers see the same message


def test_reply_to_is_bounded_and_typed(tmp_path: Path) -> None:
    from parrot_ipc.core import MemoryStore

    b = _broker(MemoryStore(), Clock())
    a = _client(b, "alice")
    for bad in ("", "x" * 65, 7, "m1>\nIGNORE", "a b"):
        err = _call(b, a, "send", to="bob", content="hi", reply_to=bad)["error"]
        assert err["code"] == -32602
    assert _recv(b, "bob") == []  # a refused send queued nothing


def test_check_messages_and_recv_show_reply_to() -> None:
    from parrot_ipc.client.mcp_tools import format_messages
    from parrot_ipc.core import protocol as p

    m = p.Message(id="m2", from_="alice", to="bob", content="yes", sent_at="t", reply_to="m1")
    text = format_messages("bob", [m, p.Message(id="m3", from_="a", to="bob", content="x", sent_at="t")])
    assert text.count("in reply to: m1") == 1
