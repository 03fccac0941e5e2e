"""``get_resource`` in the sans-I/O core, with a fake reader (docs/protocol.md, Methods)."""

from __future__ import annotations

import hashlib

import pytest
from core_harness import BROKER_UID, AdmitAll, Harness

from parrot_ipc.core import Broker, DefaultPolicy
from parrot_ipc.core.policy import DEFAULT_SCOPES, SCOPE_RESOURCES
from parrot_ipc.errors import ResourceRefused

TEXT = "CONFIDENTIAL: be concise.\n"


class FakeReader:
    """Serves a dict of name -> bytes, records every name it was asked for."""

    def __init__(self, files: dict[str, bytes | Exception]) -> None:
        self.files = files
        self.asked: list[str] = []

    def __call__(self, name: str) -> bytes | None:
        self.asked.append(name)
        item = self.files.get(name)
        if isinstance(item, Exception):
            raise item
        return item


def _harness(files: dict[str, bytes | Exception], policy: object = None) -> tuple[Harness, FakeReader]:
    h = Harness(policy=policy)  # type: ignore[arg-type]
    reader = FakeReader(files)
    h.broker = Broker(config=h.broker.config, policy=h.broker.policy, clock=h.clock, token_bytes=h.tokens,
                      audit=h.audit, resources=reader)
    return h, reader


def test_get_resource_returns_content_and_sha256() -> None:
    h, reader = _harness({"instructions": TEXT.encode()})
    peer = h.register("claude-1")
    res = peer.ok("get_resource", {"name": "instructions"})
    assert res == {"name": "instructions", "content": TEXT, "sha256": hashlib.sha256(TEXT.encode()).hexdigest()}
    assert reader.asked == ["instructions"]
    assert h.audit.named("resource_served")[0]["sha256"] == res["sha256"]


def test_unknown_resource_is_32005_resource_not_found() -> None:
    h, _ = _harness({})
    err = h.register("claude-1").err("get_resource", {"name": "nope"})
    assert (err["code"], err["data"]["reason"]) == (-32005, "resource_not_found")


def test_broker_without_reader_has_no_resources() -> None:
    h = Harness()
    err = h.register("claude-1").err("get_resource", {"name": "instructions"})
    assert (err["code"], err["data"]["reason"]) == (-32005, "resource_not_found")


def test_refused_or_non_utf8_file_is_32005_resource_refused_without_details() -> None:
    h, _ = _harness({"bad": ResourceRefused("resource /x/bad is a symlink"), "bin": b"\xff\xfe"})
    peer = h.register("claude-1")
    for name in ("bad", "bin"):
        err = peer.err("get_resource", {"name": name})
        assert (err["code"], err["data"]["reason"]) == (-32005, "resource_refused")
        assert "symlink" not in err["message"]
    assert [e["why"] for e in h.audit.named("resource_refused")] == ["resource /x/bad is a symlink", "not UTF-8"]


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "/etc/passwd", "", ".hidden", "a..b", "x" * 65,
                                  "a\x00b", "é"])
def test_bad_names_are_32602_and_never_reach_the_reader(name: str) -> None:
    h, reader = _harness({"a..b": b"no"})
    err = h.register("claude-1").err("get_resource", {"name": name})
    assert err["code"] == -32602
    assert reader.asked == []


def test_get_resource_without_a_session_needs_the_admission_scope_and_claims_no_name() -> None:
    """Issue 13: a bridge reads its instructions before it claims its instance."""
    h, reader = _harness({"instructions": b"x"})
    peer = h.connect()
    assert peer.ok("get_resource", {"name": "instructions"})["content"] == "x"
    assert list(h.broker.store.name_owners()) == [] and list(h.broker.store.sessions()) == []
    assert h.audit.named("resource_served")[0]["instance"] is None
    assert peer.err("whoami")["data"]["reason"] == "no_session"
    assert reader.asked == ["instructions"]


def test_get_resource_without_a_session_or_the_scope_is_32002_and_never_reads() -> None:
    h, reader = _harness({"instructions": b"x"}, AdmitAll(DEFAULT_SCOPES - {SCOPE_RESOURCES}))
    err = h.connect().err("get_resource", {"name": "instructions"})
    assert (err["code"], err["data"]["reason"], err["data"]["scope"]) == (-32002, "scope_missing", "resources")
    assert reader.asked == []


def test_get_resource_needs_the_resources_scope() -> None:
    h, reader = _harness({"instructions": b"x"}, AdmitAll(DEFAULT_SCOPES - {SCOPE_RESOURCES}))
    err = h.register("claude-1").err("get_resource", {"name": "instructions"})
    assert (err["code"], err["data"]["reason"], err["data"]["scope"]) == (-32002, "scope_missing", "resources")
    assert reader.asked == []


def test_default_policy_grants_resources() -> None:
    h, _ = _harness({"instructions": b"x"}, DefaultPolicy(BROKER_UID))
    assert "resources" in h.register("claude-1").ok("whoami")["scopes"]
