"""The broker under socket activation, end to end, through ``systemd-socket-activate``.

systemd-socket-activate(1) binds the socket, waits for the first connection, then execs the
broker with the socket at fd 3 and LISTEN_PID/LISTEN_FDS set, as systemd does for a
``.socket`` unit. The test listens on its own NOTIFY_SOCKET and sees READY=1 (with STATUS=),
WATCHDOG=1 at half of WATCHDOG_USEC, then STOPPING=1 after SIGTERM. A Client pings through the
activated socket; the broker neither creates the directory named by --socket nor unlinks the
socket systemd owns.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parrot_ipc import Client

START_TIMEOUT_S = 15.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh 0700 directory with a short path (sun_path holds 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="pipc-sa-"))
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    d.rmdir()


def _datagrams(sock: socket.socket, want: str, timeout_s: float) -> list[str]:
    """Receive notification datagrams until one has the assignment ``want``; return them all."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if want in got[-1].split("\n"):
            return got
    raise AssertionError(f"no {want} within {timeout_s} s; got {got}")


def _state(parent: Path) -> str:
    """A private state directory, so no test broker ever writes the system's /var/lib/parrot-mcp."""
    d = parent / "state"
    d.mkdir(mode=0o700, exist_ok=True)
    return str(d)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PARROT_IPC_", "LISTEN_", "NOTIFY_", "WATCHDOG_")) and k != "PARROT_MAX_INPUT_SIZE"}
    env.update(extra)
    return env


def test_socket_activated_broker_serves_fd_3_and_notifies(tool: Callable[[str], str], short_dir: Path) -> None:
    sock_path = str(short_dir / "mcp.sock")
    notify_path = str(short_dir / "notify")
    named = short_dir / "absent" / "mcp.sock"  # --socket: only a name under activation
    log_path = short_dir / "broker.log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, log_path.open("wb") as log:
        notify.bind(notify_path)
        cmd = [tool("systemd-socket-activate"), "-l", sock_path, "-E", f"NOTIFY_SOCKET={notify_path}",
               "-E", "WATCHDOG_USEC=400000", sys.executable, "-m", "parrot_ipc", "serve", "--socket", str(named), "--state-dir", _state(short_dir)]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=_env())
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not os.path.exists(sock_path):
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.02)
            # The first connection makes systemd-socket-activate exec the broker.
            with Client(sock_path, timeout_s=START_TIMEOUT_S) as c:
                assert c.ping() == "pong"
            ready = _datagrams(notify, "READY=1", START_TIMEOUT_S)
            assert any(line.startswith("STATUS=") and "connection" in line and "session" in line
                       for d in ready for line in d.split("\n")), ready
            _datagrams(notify, "WATCHDOG=1", 2)  # every WATCHDOG_USEC / 2 = 0.2 s
            with Client(sock_path, timeout_s=5) as c:  # still serving on the same socket
                assert c.get_token("activated").instance_id == "activated"
            proc.send_signal(signal.SIGTERM)
            _datagrams(notify, "STOPPING=1", 10)
            assert proc.wait(10) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log_text = log_path.read_text()
    assert "socket-activated" in log_text, log_text
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode), "the broker unlinked the socket systemd owns"
    assert not named.parent.exists(), "the broker created a runtime directory under activation"


def test_without_notify_socket_the_activated_broker_still_serves(tool: Callable[[str], str], short_dir: Path) -> None:
    sock_path = str(short_dir / "mcp.sock")
    cmd = [tool("systemd-socket-activate"), "-l", sock_path,
           sys.executable, "-m", "parrot_ipc", "serve", "--socket", sock_path, "--state-dir", _state(short_dir)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=_env())
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(sock_path):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        with Client(sock_path, timeout_s=START_TIMEOUT_S) as c:
            assert c.ping() == "pong"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_a_datagram_fd_3_is_refused_with_one_line(tmp_path: Path) -> None:
    """Serve refuses an activated fd that is not an AF_UNIX stream socket: exit 1, one line."""
    launch = ("import os, sys\nfd = int(sys.argv[1])\nif fd != 3:\n    os.dup2(fd, 3)\n    os.close(fd)\n"
              "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
              "os.execv(sys.executable, [sys.executable, '-m', 'parrot_ipc', 'serve', '--socket', sys.argv[2],"
              " '--state-dir', sys.argv[3]])\n")
    named = tmp_path / "run" / "mcp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        res = subprocess.run([sys.executable, "-c", launch, str(s.fileno()), str(named), _state(tmp_path)], pass_fds=[s.fileno()],
                             capture_output=True, text=True, timeout=30, env=_env())
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "socket activation passed fd 3" in errors[0], res.stderr
    assert not named.parent.exists()
