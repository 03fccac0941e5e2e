"""Root only: names are owned by the UID that first registered them (issue 13, finding 1).

The reproductions of the attack run, with real Unix users: eve (``u2``, in the socket group)
owns a name, root sends to it, mallory (``u3``, another admitted user) tries to take it. On
the broker before issue 13 mallory got the mail; now she gets -32006
``instance_owned_by_other_uid`` whether or not eve is online, and eve gets her mail. The users,
their standard-library client (run with /usr/bin/python3 through runuser) and the broker with
an audit log come from ``test_policy_users.py``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from test_policy_users import ROOT_RULE, People, PolicyBroker, _error, people, policy_broker

from parrot_ipc import Client, ParrotError

pytestmark = pytest.mark.root
__all__ = ["people", "policy_broker"]  # the fixtures, re-used


def _config(p: People, server: str = "", eve_rule: str = "") -> str:
    return f"""
[server]
socket_group = "{p.group}"
{server}

[[peers]]
name = "eve"
groups = ["{p.group}"]
{eve_rule}

[[peers]]
name = "mallory"
uids = [{p.u3.uid}]
{ROOT_RULE}"""


def _start(p: People, policy_broker: Any, **kw: str) -> PolicyBroker:
    b = policy_broker(_config(p, **kw))
    b.open_up()  # mallory is not in the socket group: let the policy, not the mode, admit her
    return b


def _root_sends(b: PolicyBroker, to: str, *texts: str) -> list[tuple[str, str]]:
    with Client(b.socket) as root:
        root.get_token("root-sender")
        return [(r.to, r.status) for r in (root.send(to, t) for t in texts)]


def _mallory_takes(p: People, b: PolicyBroker, name: str) -> dict[str, Any]:
    doc = p.rpc(p.u3, b.socket, [["get_token", {"instance_id": name}], ["receive", None]])
    assert _error(doc["responses"][0]) == (-32006, "instance_owned_by_other_uid"), doc
    assert _error(doc["responses"][1]) == (-32001, "no_session")
    ev = b.wait_event(lambda e: e["event"] == "token_refused" and e["uid"] == p.u3.uid and e["instance"] == name)
    assert ev["owner_uid"] == p.u2.uid
    return doc


def _eve_reads(p: People, b: PolicyBroker, name: str) -> list[str]:
    doc = p.rpc(p.u2, b.socket, [["get_token", {"instance_id": name}], ["receive", None]])
    return [m["content"] for m in doc["responses"][1]["result"]["messages"]]


def test_revoke_mallory_cannot_take_eves_name_and_eve_gets_her_mail(people: People, policy_broker) -> None:
    b = _start(people, policy_broker)
    doc = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve-b"}], ["revoke", None]])
    assert doc["responses"][1]["result"] == {"revoked": True}
    assert _root_sends(b, "eve-b", "secret 1", "secret 2") == [("eve-b", "queued")] * 2
    _mallory_takes(people, b, "eve-b")
    assert _eve_reads(people, b, "eve-b") == ["secret 1", "secret 2"]
    claim = b.wait_event(lambda e: e["event"] == "name_claimed" and e["instance"] == "eve-b")
    assert claim["uid"] == people.u2.uid


def test_token_expiry_mallory_cannot_take_eves_name(people: People, policy_broker) -> None:
    b = _start(people, policy_broker, server="token_ttl_s = 1.0")
    tok = people.token_file(people.u2, "eve-c")
    people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve-c"}]], "--token-out", str(tok))
    assert _root_sends(b, "eve-c", "secret") == [("eve-c", "queued")]
    deadline = time.monotonic() + 10
    while True:  # poll until eve's token has expired (token_ttl_s = 1)
        doc = people.rpc(people.u2, b.socket, [["authenticate", {"token": "$TOKEN"}]], "--token-in", str(tok))
        if "error" in doc["responses"][0]:
            assert _error(doc["responses"][0]) == (-32001, "token_expired")
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    _mallory_takes(people, b, "eve-c")
    assert _eve_reads(people, b, "eve-c") == ["secret"]


def test_rename_onto_mallory_cannot_rename_her_instance_onto_eves(people: People, policy_broker) -> None:
    b = _start(people, policy_broker)
    people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve-f"}], ["revoke", None]])
    _root_sends(b, "eve-f", "for eve")
    doc = people.rpc(people.u3, b.socket, [["get_token", {"instance_id": "mallory-1"}],
                                           ["rename", {"new_id": "eve-f"}], ["receive", None]])
    assert _error(doc["responses"][1]) == (-32006, "instance_owned_by_other_uid")
    assert doc["responses"][2]["result"] == {"messages": []}
    ev = b.wait_event(lambda e: e["event"] == "name_refused" and e["instance"] == "eve-f")
    assert (ev["uid"], ev["owner_uid"], ev["method"]) == (people.u3.uid, people.u2.uid, "rename")
    assert _eve_reads(people, b, "eve-f") == ["for eve"]


def test_forward_after_eve_renames_mallory_cannot_take_the_old_name_and_mail_reaches_eve(
        people: People, policy_broker) -> None:
    b = _start(people, policy_broker)
    tok = people.token_file(people.u2, "eve-d")
    doc = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve-d"}], ["rename", {"new_id": "eve-e"}]],
                     "--token-out", str(tok))
    assert doc["responses"][1]["result"] == {"instance_id": "eve-e", "previous_id": "eve-d"}
    _mallory_takes(people, b, "eve-d")
    assert _root_sends(b, "eve-d", "to the old name") == [("eve-e", "forwarded")]
    doc = people.rpc(people.u2, b.socket, [["authenticate", {"token": "$TOKEN"}], ["receive", None]],
                     "--token-in", str(tok))
    assert [m["content"] for m in doc["responses"][1]["result"]["messages"]] == ["to the old name"]


def test_a_names_rule_with_user_limits_claims_to_the_users_own_prefix(people: People, policy_broker) -> None:
    b = _start(people, policy_broker, eve_rule='names = ["{user}-*"]')
    own, other = f"{people.u2.name}-1", f"{people.u3.name}-1"
    doc = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": own}],
                                           ["rename", {"new_id": other}]])
    assert doc["responses"][0]["result"]["instance_id"] == own
    assert _error(doc["responses"][1]) == (-32002, "instance_name_not_allowed")
    doc = people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve-x"}]])
    assert _error(doc["responses"][0]) == (-32002, "instance_name_not_allowed")


def test_eve_releases_her_name_and_only_then_may_mallory_take_it_without_the_mail(
        people: People, policy_broker) -> None:
    b = _start(people, policy_broker)
    people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve-g"}]])
    _root_sends(b, "eve-g", "private")
    doc = people.rpc(people.u3, b.socket, [["release", {"instance_id": "eve-g"}]])
    assert _error(doc["responses"][0]) == (-32006, "instance_owned_by_other_uid")
    doc = people.rpc(people.u2, b.socket, [["release", {"instance_id": "eve-g"}]])
    assert doc["responses"][0]["result"] == {"instance_id": "eve-g", "owner_uid": people.u2.uid, "dropped": 1}
    doc = people.rpc(people.u3, b.socket, [["get_token", {"instance_id": "eve-g"}], ["receive", None]])
    assert doc["responses"][1]["result"] == {"messages": []}


def test_root_admin_release_frees_a_name(people: People, policy_broker) -> None:
    b = _start(people, policy_broker)
    people.rpc(people.u2, b.socket, [["get_token", {"instance_id": "eve-h"}]])
    with Client(b.socket) as root:
        root.get_token("ops-1")
        with pytest.raises(ParrotError) as exc:
            root.release("eve-h")
        assert exc.value.reason == "instance_owned_by_other_uid"
        assert root.admin_release("eve-h").owner_uid == people.u2.uid
    doc = people.rpc(people.u3, b.socket, [["get_token", {"instance_id": "eve-h"}]])
    assert doc["responses"][0]["result"]["instance_id"] == "eve-h"
