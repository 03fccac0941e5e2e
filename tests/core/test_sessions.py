"""Sessions: issuing, binding, taking over, expiring and revoking tokens; scope checks."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import pytest
from core_harness import BROKER_UID, AdmitAll, Harness

from parrot_ipc.core import Admission, BrokerConfig, PeerCredentials
from parrot_ipc.core.broker import METHODS
from parrot_ipc.core.timefmt import parse_rfc3339

UNAUTHENTICATED, FORBIDDEN, CONFLICT = -32001, -32002, -32006
OTHER_UID = 2000


def _children(obj: Any) -> Iterable[Any]:
    """What ``obj`` holds, in order: a dict's keys and values, a container's items, a
    dataclass's or Struct's fields, a plain object's ``__dict__``; nothing for anything else."""
    if isinstance(obj, dict):
        return (x for kv in obj.items() for x in kv)
    if isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
        items: Iterable[Any] = obj
        return items
    if dataclasses.is_dataclass(obj):
        return (getattr(obj, f.name) for f in dataclasses.fields(obj))
    if isinstance(obj, msgspec.Struct):
        return (getattr(obj, name) for name in obj.__struct_fields__)
    if hasattr(obj, "__dict__"):
        return (vars(obj),)
    return ()


def leaves(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every scalar reachable from ``obj``: containers, dataclasses, Structs and plain objects."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (str, bytes, bytearray, int, float, bool)) or obj is None:
        yield obj
        return
    for child in _children(obj):
        yield from leaves(child, seen)


def test_leaves_walks_into_the_store() -> None:
    """The walker itself must find what is there, or the secrecy test below proves nothing."""
    h = Harness()
    h.register("needle-holder")
    found = list(leaves(h.broker.store))
    assert "needle-holder" in found
    assert any(isinstance(x, bytes) and len(x) == 32 for x in found)  # the token hash


# --------------------------------------------------------------------------- get_token
def test_get_token_returns_a_43_char_urlsafe_token_from_32_random_bytes(harness: Harness) -> None:
    result = harness.connect().ok("get_token", {"instance_id": "a"})
    token = result["token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert base64.urlsafe_b64decode(token + "=") == harness.tokens.issued[-1]
    assert len(harness.tokens.issued[-1]) == 32


def test_get_token_result_carries_instance_expiry_and_scopes(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(token_ttl_s=3600))
    result = h.connect().ok("get_token", {"instance_id": "a"})
    assert result["instance_id"] == "a"
    assert parse_rfc3339(result["expires_at"]) == pytest.approx(h.clock.now + 3600, abs=0.001)
    assert result["expires_at"].endswith("Z")
    assert result["scopes"] == sorted(result["scopes"]) and "send" in result["scopes"]


def test_tokens_differ_per_issue(harness: Harness) -> None:
    a, b = harness.register("a"), harness.register("b")
    assert a.token != b.token


def test_only_the_sha256_of_the_token_is_stored(harness: Harness) -> None:
    peer = harness.register("a")
    token = peer.token
    assert token is not None
    raw = harness.tokens.issued[-1]
    session = peer.conn.session
    assert session is not None
    assert session.token_hash == hashlib.sha256(token.encode()).digest()
    for leaf in leaves(harness.broker.store):
        if isinstance(leaf, str):
            assert token not in leaf
        elif isinstance(leaf, (bytes, bytearray)):
            assert raw not in leaf and token.encode() not in leaf
    for leaf in leaves(session):
        assert leaf != token and leaf != raw


def test_the_token_never_reaches_the_audit_log(harness: Harness) -> None:
    peer = harness.register("a")
    other = harness.connect(uid=0)
    other.err("authenticate", {"token": peer.token})
    harness.connect().ok("authenticate", {"token": peer.token})
    assert peer.token is not None
    for _, fields in harness.audit:
        for leaf in leaves(fields):
            assert not (isinstance(leaf, str) and peer.token in leaf)
    assert harness.audit.named("token_issued")


def test_get_token_by_the_same_uid_takes_over_and_kills_the_old_token(harness: Harness) -> None:
    first = harness.register("a")
    second = harness.register("a")  # same uid, another process
    assert second.token != first.token
    stale = first.err("whoami")
    assert stale["code"] == UNAUTHENTICATED and stale["data"]["reason"] == "token_revoked"
    late = harness.connect().err("authenticate", {"token": first.token})
    assert late["code"] == UNAUTHENTICATED
    assert second.ok("whoami")["instance_id"] == "a"
    (ended,) = harness.audit.named("session_ended")
    assert ended["why"] == "replaced" and ended["instance"] == "a"


def test_get_token_for_an_instance_held_live_by_another_uid_conflicts(harness: Harness) -> None:
    holder = harness.register("a", uid=BROKER_UID)
    intruder = harness.connect(uid=0)
    error = intruder.err("get_token", {"instance_id": "a"})
    assert error["code"] == CONFLICT
    assert error["data"]["reason"] == "instance_owned_by_other_uid"
    assert intruder.conn.session is None
    assert holder.ok("whoami")["instance_id"] == "a"
    (refused,) = harness.audit.named("token_refused")
    assert refused["uid"] == 0 and refused["instance"] == "a" and refused["owner_uid"] == BROKER_UID


def test_another_uid_may_not_take_an_instance_once_its_session_expired(make_harness: type[Harness]) -> None:
    """Issue 13, finding 1 (expiry): the name stays its owner's."""
    h = make_harness(BrokerConfig(token_ttl_s=100))
    h.register("a", uid=BROKER_UID)
    h.clock.advance(100)
    assert h.connect(uid=0).err("get_token", {"instance_id": "a"})["code"] == CONFLICT
    assert h.register("a", uid=BROKER_UID).ok("whoami")["uid"] == BROKER_UID


# --------------------------------------------------------------------------- authenticate
def test_authenticate_binds_a_new_connection_to_the_session(harness: Harness) -> None:
    owner = harness.register("a")
    again = harness.connect()
    result = again.ok("authenticate", {"token": owner.token})
    assert result["instance_id"] == "a"
    me = again.ok("whoami")
    assert me["instance_id"] == "a" and me["pid"] == again.conn.peer.pid
    assert harness.audit.named("authenticated")[-1]["instance"] == "a"


def test_authenticate_from_another_uid_is_refused_and_audited(make_harness: type[Harness]) -> None:
    h = make_harness(policy=AdmitAll())
    owner = h.register("a", uid=BROKER_UID)
    thief = h.connect(uid=OTHER_UID)
    error = thief.err("authenticate", {"token": owner.token})
    assert error["code"] == UNAUTHENTICATED
    assert error["data"]["reason"] == "token_uid_mismatch"
    assert owner.token is not None and owner.token not in error["message"]
    assert thief.conn.session is None
    assert thief.err("whoami")["code"] == UNAUTHENTICATED
    (event,) = h.audit.named("token_uid_mismatch")
    assert event["uid"] == OTHER_UID and event["token_uid"] == BROKER_UID and event["instance"] == "a"


def test_token_bound_to_root_cannot_be_used_by_the_broker_uid(harness: Harness) -> None:
    root = harness.register("r", uid=0)
    error = harness.connect(uid=BROKER_UID).err("authenticate", {"token": root.token})
    assert error["data"]["reason"] == "token_uid_mismatch"


@pytest.mark.parametrize("token", ["x", "A" * 43, "not a token at all", "A" * 256])
def test_authenticate_with_an_unknown_token_fails(harness: Harness, token: str) -> None:
    harness.register("a")
    error = harness.connect().err("authenticate", {"token": token})
    assert error["code"] == UNAUTHENTICATED and error["data"]["reason"] == "token_invalid"
    assert token not in error["message"]
    assert harness.audit.named("auth_failed")


def test_authenticate_with_an_altered_token_fails(harness: Harness) -> None:
    owner = harness.register("a")
    assert owner.token is not None
    flipped = owner.token[:-1] + ("A" if owner.token[-1] != "A" else "B")
    assert harness.connect().err("authenticate", {"token": flipped})["code"] == UNAUTHENTICATED


# --------------------------------------------------------------------------- expiry
def test_token_expires_after_token_ttl_s(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(token_ttl_s=100))
    peer = h.register("a")
    h.clock.advance(99.5)
    assert peer.ok("whoami")["instance_id"] == "a"
    h.clock.advance(0.5)
    error = peer.err("whoami")
    assert error["code"] == UNAUTHENTICATED and error["data"]["reason"] == "token_expired"
    late = h.connect().err("authenticate", {"token": peer.token})
    assert late["code"] == UNAUTHENTICATED and late["data"]["reason"] == "token_expired"


def test_expired_connection_is_no_longer_online(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(token_ttl_s=100))
    peer = h.register("a")
    assert "a" in h.broker.online_instances()
    h.clock.advance(100)
    peer.err("whoami")
    assert "a" not in h.broker.online_instances()


def test_a_fresh_get_token_after_expiry_works(make_harness: type[Harness]) -> None:
    h = make_harness(BrokerConfig(token_ttl_s=100))
    peer = h.register("a")
    h.clock.advance(500)
    peer.ok("get_token", {"instance_id": "a"})
    assert peer.ok("whoami")["instance_id"] == "a"


# --------------------------------------------------------------------------- revoke
def test_revoke_kills_the_token(harness: Harness) -> None:
    peer = harness.register("a")
    sibling = harness.connect()
    sibling.ok("authenticate", {"token": peer.token})
    assert peer.ok("revoke") == {"revoked": True}
    for conn in (peer, sibling):
        error = conn.err("whoami")
        assert error["code"] == UNAUTHENTICATED and error["data"]["reason"] == "token_revoked"
    error = harness.connect().err("authenticate", {"token": peer.token})
    assert error["code"] == UNAUTHENTICATED
    assert harness.audit.named("session_ended")[-1]["why"] == "revoked"


def test_a_revoked_instance_is_not_free_for_another_uid(harness: Harness) -> None:
    """Issue 13, finding 1 (revoke): revoking ends the session, not the ownership."""
    harness.register("a").ok("revoke")
    assert harness.connect(uid=0).err("get_token", {"instance_id": "a"})["data"]["reason"] == \
        "instance_owned_by_other_uid"


# --------------------------------------------------------------------------- gate on methods
# get_resource and release were added by issue 13 (docs/protocol.md says what changed). The
# relay's methods take no session: they check the admission's 'relay' scope instead
# (tests/core/test_federation.py::test_relay_methods_need_the_relay_scope; issue 18).
PUBLIC = {"ping", "get_token", "authenticate", "get_resource", "release", "relay_take", "relay_ack",
          "relay_deliver"}


@pytest.mark.parametrize("method", sorted(set(METHODS) - PUBLIC))
def test_methods_before_authentication_are_refused(harness: Harness, method: str) -> None:
    error = harness.connect().err(method, {})
    assert error["code"] == UNAUTHENTICATED
    assert error["data"]["reason"] == "no_session"


def test_exactly_the_documented_methods_work_without_a_session(harness: Harness) -> None:
    codes = {m: harness.connect().call(m, {}).get("error", {}).get("code") for m in METHODS}
    assert {m for m, code in codes.items() if code != UNAUTHENTICATED} == PUBLIC


def test_missing_scope_is_forbidden(make_harness: type[Harness]) -> None:
    class SendOnly:
        def admit(self, peer: PeerCredentials) -> Admission:
            return Admission(True, "test", scopes=frozenset({"send"}))

    h = make_harness(policy=SendOnly())
    peer = h.register("a")
    assert peer.ok("send", {"to": "b", "content": "allowed"})["status"] == "queued"
    for method, scope in [("receive", "receive"), ("subscribe", "receive"), ("list_instances", "list"),
                          ("broadcast", "broadcast"), ("rename", "rename")]:
        params = {"content": "x"} if method == "broadcast" else {"new_id": "z"} if method == "rename" else {}
        error = peer.err(method, params)
        assert error["code"] == FORBIDDEN, method
        assert error["data"] == {"reason": "scope_missing", "scope": scope}
    # Session-level methods need no scope.
    assert peer.ok("whoami")["scopes"] == ["send"]
    assert peer.ok("ack", {"ids": []}) == {"acked": 0}
    denied = h.audit.named("scope_denied")
    assert [e["scope"] for e in denied] == ["receive", "receive", "list", "broadcast", "rename"]


# --------------------------------------------------------------------------- shared secret
def test_shared_secret_mode_needs_a_valid_proof(make_harness: type[Harness]) -> None:
    secret = b"s3cret"
    h = make_harness(shared_secret=secret)
    proof = hmac.new(secret, b"a", hashlib.sha256).hexdigest()
    for params in ({"instance_id": "a"}, {"instance_id": "a", "shared_secret_proof": "00" * 32},
                   {"instance_id": "a", "shared_secret_proof": hmac.new(secret, b"b", hashlib.sha256).hexdigest()}):
        error = h.connect().err("get_token", params)
        assert error["code"] == FORBIDDEN and error["data"]["reason"] == "bad_shared_secret_proof"
        assert "s3cret" not in error["message"]
    assert h.connect().ok("get_token", {"instance_id": "a", "shared_secret_proof": proof})["instance_id"] == "a"
