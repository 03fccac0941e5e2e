"""parrot_ipc.os.systemd against real sockets: sd_notify(3) datagrams (path and abstract
addresses), sd_watchdog_enabled(3), and sd_listen_fds(3) in a child process whose fd 3 is a
socket we pass, with LISTEN_PID set to its own pid.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from parrot_ipc.errors import StartupError
from parrot_ipc.os.systemd import (
    Notifier,
    activated_listener,
    adopt_listener,
    listen_fds,
    notify_address,
    watchdog_interval,
)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound at a path: what the service manager listens on."""
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield s, path
    s.close()


def test_notify_address_forms() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@sd-notify/123") == "\0sd-notify/123"
    assert notify_address("relative/path") is None
    assert notify_address("") is None
    assert notify_address(None) is None


def test_notify_sends_one_datagram_with_newline_separated_assignments(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier(path)
    assert n.enabled
    assert n.notify("READY=1", "STATUS=serving: 0 connection(s)")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving: 0 connection(s)"
    assert n.notify("STATUS=two\nlines")  # a newline inside a value would start a new assignment
    assert sock.recv(4096) == b"STATUS=two lines"
    n.close()


def test_notify_to_the_abstract_namespace() -> None:
    name = f"parrot-ipc-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        n = Notifier("@" + name)
        assert n.notify("WATCHDOG=1")
        assert s.recv(4096) == b"WATCHDOG=1"
        n.close()


def test_notify_is_a_no_op_without_notify_socket() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.notify("READY=1") is False


def test_notify_failure_is_reported_not_raised(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert n.notify("READY=1") is False
    assert n.notify("READY=1") is False
    n.close()


def test_from_env_reads_notify_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.notify("STOPPING=1")
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, pid=4242) == expected


# --------------------------------------------------------------------------- sd_listen_fds
@pytest.mark.parametrize("env", [
    {},
    {"LISTEN_PID": "4243", "LISTEN_FDS": "1"},  # for another process: not ours to take
    {"LISTEN_PID": "4242", "LISTEN_FDS": "0"},
    {"LISTEN_PID": "4242", "LISTEN_FDS": "x"},
    {"LISTEN_PID": "pid", "LISTEN_FDS": "1"},
])
def test_listen_fds_takes_nothing_that_is_not_ours_and_unsets_the_variables(env: dict[str, str]) -> None:
    env = {**env, "LISTEN_FDNAMES": "x", "OTHER": "kept"}
    assert listen_fds(env, pid=4242) == []
    assert env == {"OTHER": "kept"}
    assert activated_listener({"LISTEN_PID": "4243", "LISTEN_FDS": "1"}, pid=4242) is None


def test_listen_fds_can_leave_the_environment() -> None:
    env = {"LISTEN_PID": "4243", "LISTEN_FDS": "1"}
    assert listen_fds(env, pid=4242, unset_environment=False) == []
    assert env == {"LISTEN_PID": "4243", "LISTEN_FDS": "1"}


_CHILD = """
import json, os, socket
from parrot_ipc.os.systemd import activated_listener
from parrot_ipc.errors import StartupError
try:
    s = activated_listener()
    out = {"fd": s.fileno(), "family": int(s.family), "type": int(s.type), "blocking": s.getblocking(),
           "cloexec": not os.get_inheritable(3)}
except StartupError as exc:
    out = {"error": str(exc)}
out["env"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
print(json.dumps(out))
"""


# What a service manager does between fork and exec: the socket at fd 3, LISTEN_PID = the pid.
_LAUNCH = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="parrot")
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]])
"""


def _run_activated(sock: socket.socket, code: str = _CHILD) -> dict[str, object]:
    """Run ``code`` in a child with ``sock`` at fd 3 and LISTEN_PID=<its pid>, LISTEN_FDS=1."""
    res = subprocess.run([sys.executable, "-c", _LAUNCH, str(sock.fileno()), code], pass_fds=[sock.fileno()],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    return out


def test_activated_listener_serves_fd_3_and_unsets_listen_vars(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(tmp_path / "a.sock"))
        s.listen()
        out = _run_activated(s)
    assert out == {"fd": 3, "family": socket.AF_UNIX, "type": socket.SOCK_STREAM, "blocking": False,
                   "cloexec": True, "env": []}


@pytest.mark.parametrize("kind", ["dgram", "not-listening", "inet"])
def test_activated_listener_refuses_anything_but_a_listening_unix_stream(kind: str, tmp_path: Path) -> None:
    if kind == "dgram":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    elif kind == "not-listening":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen()
    with s:
        out = _run_activated(s)
    err = str(out["error"])
    assert err.startswith("refusing to start: socket activation passed fd 3") and "\n" not in err
    assert out["env"] == []


def test_adopt_listener_refuses_a_file(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        with pytest.raises(StartupError, match="not a socket"):
            adopt_listener(fd)
        os.fstat(fd)  # still open: it is the service manager's
    finally:
        os.close(fd)


def test_adopt_listener_wraps_a_listening_unix_stream(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(tmp_path / "b.sock"))
        s.listen()
        adopted = adopt_listener(os.dup(s.fileno()))
        with adopted:
            assert adopted.family == socket.AF_UNIX and adopted.type == socket.SOCK_STREAM
            assert adopted.getblocking() is False
