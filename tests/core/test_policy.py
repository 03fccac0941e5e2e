"""The gate: the default policy, and what ``Broker.accept`` does with its decision."""

from __future__ import annotations

import json

import pytest
from core_harness import BROKER_UID, Harness

from parrot_ipc.core import Admission, Connection, DefaultPolicy, PeerCredentials
from parrot_ipc.core.policy import DEFAULT_SCOPES, SCOPE_ADMIN


def test_default_scopes_are_every_scope_but_admin() -> None:
    assert {"send", "receive", "list", "rename", "broadcast", "resources"} == DEFAULT_SCOPES
    assert SCOPE_ADMIN not in DEFAULT_SCOPES


@pytest.mark.parametrize(("uid", "admin"), [(0, True), (BROKER_UID, False)])
def test_default_policy_admits_root_and_the_broker_uid(uid: int, admin: bool) -> None:
    adm = DefaultPolicy(BROKER_UID).admit(PeerCredentials(pid=1, uid=uid, gid=uid))
    assert adm.allowed
    assert adm.rule
    assert adm.scopes >= DEFAULT_SCOPES
    assert (SCOPE_ADMIN in adm.scopes) is admin


@pytest.mark.parametrize("uid", [1, 999, BROKER_UID + 1, 65534, 2**31])
def test_default_policy_refuses_every_other_uid(uid: int) -> None:
    adm = DefaultPolicy(BROKER_UID).admit(PeerCredentials(pid=1, uid=uid, gid=BROKER_UID))
    assert not adm.allowed
    assert adm.reason == "peer_uid_not_allowed"
    assert adm.scopes == frozenset()


def test_default_policy_ignores_the_gid() -> None:
    """Sharing the broker's group is not enough: only the UID counts."""
    assert not DefaultPolicy(BROKER_UID).admit(PeerCredentials(pid=1, uid=4242, gid=0)).allowed


def test_default_policy_when_the_broker_runs_as_root_admits_only_root() -> None:
    policy = DefaultPolicy(0)
    assert policy.admit(PeerCredentials(pid=1, uid=0, gid=0)).allowed
    assert not policy.admit(PeerCredentials(pid=1, uid=BROKER_UID, gid=BROKER_UID)).allowed


def test_accept_of_a_refused_peer_returns_one_forbidden_frame(harness: Harness) -> None:
    out = harness.broker.accept(PeerCredentials(pid=77, uid=4242, gid=4242))
    assert isinstance(out, bytes)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    resp = json.loads(out)
    assert resp["jsonrpc"] == "2.0"
    assert resp["id"] is None
    assert resp["error"]["code"] == -32002
    assert resp["error"]["data"]["reason"] == "peer_uid_not_allowed"
    assert "4242" in resp["error"]["message"]
    assert harness.broker.connections == 0


def test_refused_and_admitted_peers_are_both_audited(harness: Harness) -> None:
    harness.broker.accept(PeerCredentials(pid=77, uid=4242, gid=4343, exe="/usr/bin/socat"))
    harness.broker.accept(PeerCredentials(pid=78, uid=BROKER_UID, gid=BROKER_UID, has_pidfd=True))
    (refused,) = harness.audit.named("peer_refused")
    assert refused == {"uid": 4242, "gid": 4343, "pid": 77, "exe": "/usr/bin/socat", "rule": "default",
                       "reason": "peer_uid_not_allowed"}
    (admitted,) = harness.audit.named("peer_admitted")
    assert admitted["uid"] == BROKER_UID and admitted["pid"] == 78 and admitted["pidfd"] is True
    assert admitted["rule"] == "default:broker_uid"


def test_accept_of_an_admitted_peer_returns_a_connection_without_a_session(harness: Harness) -> None:
    conn = harness.broker.accept(PeerCredentials(pid=5, uid=BROKER_UID, gid=BROKER_UID))
    assert isinstance(conn, Connection)
    assert conn.session is None and conn.instance_id is None
    assert harness.broker.connections == 1
    other = harness.broker.accept(PeerCredentials(pid=6, uid=0, gid=0))
    assert isinstance(other, Connection) and other.conn_id != conn.conn_id
    harness.broker.close(conn)
    assert harness.broker.connections == 1


def test_root_session_gets_the_admin_scope_and_the_broker_uid_does_not(harness: Harness) -> None:
    root = harness.register("rooty", uid=0)
    own = harness.register("mine", uid=BROKER_UID)
    root_scopes = root.ok("whoami")["scopes"]
    own_scopes = own.ok("whoami")["scopes"]
    assert "admin" in root_scopes
    assert "admin" not in own_scopes
    # Issue 18: the broker's UID may also send off-host and be the relay; root may send off-host.
    assert set(own_scopes) == DEFAULT_SCOPES | {"remote_send", "relay"}
    assert set(root_scopes) == DEFAULT_SCOPES | {"admin", "remote_send"}


def test_scopes_come_from_the_policy(make_harness: type[Harness]) -> None:
    class OnlySend:
        def admit(self, peer: PeerCredentials) -> Admission:
            return Admission(True, "test", scopes=frozenset({"send"}))

    h = make_harness(policy=OnlySend())
    peer = h.connect(uid=31337)  # any uid: this policy admits everyone
    result = peer.ok("get_token", {"instance_id": "limited"})
    assert result["scopes"] == ["send"]


def test_ping_works_before_authentication(harness: Harness) -> None:
    assert harness.connect().ok("ping") == "pong"
