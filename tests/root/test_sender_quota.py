"""Root only: the sender quota (issue 14) with two real Unix users.

eve (``u2``) and bob (``u3``) are admitted by UID; root holds the mailbox ``boss``. With
``max_sender_queued_messages = 3``, eve's fourth unread message is refused with -32007
``sender_quota_exceeded`` (audited once for her stretch) while bob, another UID, still sends;
once root reads eve's mail she may send again. The users, their standard-library client (run
with /usr/bin/python3 through runuser) and the broker with an audit log come from
``test_policy_users.py``.
"""

from __future__ import annotations

import pytest
from test_policy_users import People, _error, people, policy_broker, policy_toml

from parrot_ipc import Client

pytestmark = pytest.mark.root
__all__ = ["people", "policy_broker"]  # the fixtures, re-used


def _sends(n: int, to: str, tag: str) -> list[list[object]]:
    return [["send", {"to": to, "content": f"{tag} {i}"}] for i in range(n)]


def test_one_users_sends_past_its_quota_are_refused_while_another_user_still_sends(
        people: People, policy_broker) -> None:
    b = policy_broker(policy_toml({"max_sender_queued_messages": 3},
                                  {"name": "agents", "uids": [people.u2.uid, people.u3.uid]}))
    b.open_up()
    with Client(b.socket) as boss:
        boss.get_token("boss")
        eve = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve"}], *_sends(5, "boss", "eve")])
        got = eve["responses"][1:]
        assert ["result" in r for r in got] == [True, True, True, False, False], got
        assert _error(got[3]) == (-32007, "sender_quota_exceeded")
        assert got[3]["error"]["data"]["max_sender_queued_messages"] == 3
        bob = people.rpc(people.u3, b.socket, [["get_token", {"instance_id": "bob"}], *_sends(2, "boss", "bob")])
        assert all("result" in r for r in bob["responses"]), bob
        msgs = boss.receive(max=100)
        assert sorted(m.content for m in msgs) == ["bob 0", "bob 1", "eve 0", "eve 1", "eve 2"]
        b.wait_event(lambda e: e["event"] == "sender_quota_exceeded")
        refused = b.events("sender_quota_exceeded")
        assert [e["uid"] for e in refused] == [people.u2.uid]  # once for the stretch, eve only
        boss.ack([m.id for m in msgs])
        again = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve"}], *_sends(1, "boss", "eve again")])
        assert "result" in again["responses"][1], again
