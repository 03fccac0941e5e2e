"""Root only: two real Unix users against a broker with a node name (docs/federation.md): the
one whose ``[[peers]]`` rule lacks ``remote_send`` cannot send off-host, the other can, and
neither may act as the relay."""

from __future__ import annotations

import pytest
from test_policy_users import People, _error, people, policy_broker, policy_toml

pytestmark = pytest.mark.root
__all__ = ["people", "policy_broker"]  # fixtures used here


def test_a_user_without_remote_send_cannot_send_off_host(people: People, policy_broker) -> None:
    b = policy_broker(policy_toml(
        {"node": "h1"},
        {"name": "far", "users": [people.u2.name], "scopes": ["send", "receive", "remote_send"]},
        {"name": "near", "users": [people.u3.name], "scopes": ["send", "receive"]}))
    b.open_up()
    off_host = ["send", {"to": "bob@h2", "content": "x"}]
    near = people.rpc(people.u3, b.socket, [["get_token", {"instance_id": "near"}], off_host,
                                            ["send", {"to": "bob", "content": "local"}],
                                            ["relay_take", {}]])
    _, refused, local, relay = near["responses"]
    assert _error(refused) == (-32002, "scope_missing")
    assert refused["error"]["data"]["scope"] == "remote_send"
    assert local["result"]["status"] == "queued"
    assert _error(relay) == (-32002, "scope_missing")
    far = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "far"}], off_host, ["relay_take", {}]])
    _, sent, relay = far["responses"]
    assert sent["result"] == {"id": sent["result"]["id"], "to": "bob@h2", "status": "queued"}
    assert _error(relay) == (-32002, "scope_missing")
    denied = b.wait_event(lambda ev: ev["event"] == "scope_denied" and ev.get("scope") == "remote_send")
    assert denied["uid"] == people.u3.uid
