"""The per-user fallback socket directory, /tmp/parrot-ipc-UID (issue 16, first contact 1)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from parrot_ipc.client.wire import check_socket_dir
from parrot_ipc.errors import BrokerUnavailable
from parrot_ipc.os.paths import client_dir_problem, default_socket_path, is_fallback_path


def test_the_one_rule_for_every_client_and_broker() -> None:
    assert default_socket_path(1000, {}) == "/tmp/parrot-ipc-1000/mcp.sock"
    assert default_socket_path(1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == "/run/user/1000/parrot-mcp/mcp.sock"
    assert default_socket_path(0, {}) == "/run/parrot-mcp/mcp.sock"
    assert default_socket_path(1000, {"PARROT_IPC_DIR": "/srv/p"}) == "/srv/p/mcp.sock"
    assert is_fallback_path("/tmp/parrot-ipc-1000/mcp.sock", 1000)
    assert not is_fallback_path("/tmp/parrot-ipc-1001/mcp.sock", 1000)


@pytest.fixture
def fake_uid_dir() -> Iterator[tuple[int, Path]]:
    """A /tmp/parrot-ipc-UID for a UID nobody has (so no real user's dir is touched)."""
    uid = 4_000_000_000 - os.getpid()
    d = Path(f"/tmp/parrot-ipc-{uid}")
    shutil.rmtree(d, ignore_errors=True)
    yield uid, d
    shutil.rmtree(d, ignore_errors=True)


def test_a_fallback_dir_owned_by_another_uid_is_refused(fake_uid_dir: tuple[int, Path]) -> None:
    uid, d = fake_uid_dir
    sock = str(d / "mcp.sock")
    assert client_dir_problem(sock, uid) is None  # missing: connect(2) will say so
    d.mkdir(mode=0o700)  # ours, not the fake UID's: as if someone else made it first
    problem = client_dir_problem(sock, uid)
    assert problem is not None and str(d) in problem and str(uid) in problem


def test_a_fallback_dir_open_to_others_is_refused_before_connecting() -> None:
    d = Path(f"/tmp/parrot-ipc-{os.geteuid()}")
    if d.exists():
        pytest.skip(f"{d} exists (a broker of ours may use it); not touching it")
    d.mkdir(mode=0o700)
    try:
        d.chmod(0o777)
        with pytest.raises(BrokerUnavailable) as info:
            check_socket_dir(str(d / "mcp.sock"))
        assert "refusing an unsafe socket directory" in info.value.message and "0777" in info.value.message
        d.chmod(0o700)
        check_socket_dir(str(d / "mcp.sock"))  # safe: no error
    finally:
        shutil.rmtree(d, ignore_errors=True)
