"""Issue 13, finding 5, without a second user: whom a client trusts as its broker, where the
broker user's name comes from, and what the refusal says. The real second-user case is
``tests/root/test_broker_identity.py``."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path
from typing import cast

import pytest

from parrot_ipc.app.config_file import DEFAULT_CONFIG_PATH
from parrot_ipc.client import trust
from parrot_ipc.core.policy import PeerCredentials
from parrot_ipc.errors import UntrustedBroker


def test_the_client_reads_the_brokers_default_config_path() -> None:
    assert str(DEFAULT_CONFIG_PATH) == trust.CONFIG_PATH


def test_broker_user_comes_from_argument_then_environment_then_config_then_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[server]\nbroker_user = "from-config"\n')
    cfg.chmod(0o644)
    assert trust.configured_broker_user(str(cfg)) == "from-config"
    cfg.chmod(0o666)  # writable by others: not believed
    trust.configured_broker_user.cache_clear()
    assert trust.configured_broker_user(str(cfg)) is None
    monkeypatch.setattr(trust, "configured_broker_user", lambda: "from-config")
    monkeypatch.setenv(trust.BROKER_USER_ENV, "from-env")
    assert trust.broker_user_name("from-arg") == "from-arg"
    assert trust.broker_user_name() == "from-env"
    monkeypatch.delenv(trust.BROKER_USER_ENV)
    assert trust.broker_user_name() == "from-config"
    monkeypatch.setattr(trust, "configured_broker_user", lambda: None)
    assert trust.broker_user_name() == "parrot-mcp"


def test_trusted_uids_are_root_ourselves_and_an_existing_broker_user() -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    assert set(trust.trusted_uids("nobody")) == {0, os.geteuid(), nobody}
    assert set(trust.trusted_uids("no-such-user-xyz")) == {0, os.geteuid()}


def test_our_own_listener_is_trusted() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        trust.verify_broker(a, "/x.sock")  # SO_PEERCRED says: us


def test_another_listener_is_refused_with_who_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trust.os_peer, "peer_credentials", lambda sock: PeerCredentials(pid=777, uid=4242, gid=4242))
    with pytest.raises(UntrustedBroker) as info:
        trust.verify_broker(cast(socket.socket, None), "/run/x/mcp.sock", "no-such-user-xyz")
    exc = info.value
    assert (exc.listener_uid, exc.listener_pid, exc.exit_code, exc.reason) == (4242, 777, 3, "broker_not_trusted")
    assert "/run/x/mcp.sock" in exc.message and "uid 4242, pid 777" in exc.message
    assert "parrot-ipc doctor" in exc.hint
