"""``parrot-ipc serve`` as a subprocess: the runtime directory, refusals, stale sockets, signals, hostile frames."""

from __future__ import annotations

import array
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parrot_ipc import Client


@pytest.fixture
def parent() -> Iterator[Path]:
    """A fresh, short temp dir to put runtime directories in."""
    d = tempfile.mkdtemp(prefix="pipc-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _raw(path: str, timeout_s: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    s.connect(path)
    return s


def _read_until_eof(s: socket.socket) -> tuple[bytes, str]:
    """Everything the broker sends until it closes; and how it closed ("eof" or "reset")."""
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return buf, "reset"
        if not chunk:
            return buf, "eof"
        buf += chunk


def _read_lines(s: socket.socket, n: int) -> list[dict]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {buf!r}"
        buf += chunk
    return [json.loads(line) for line in buf.split(b"\n") if line]


def _unread_outgoing(s: socket.socket) -> int:
    """Bytes we sent that the peer has not read yet (SIOCOUTQ on an AF_UNIX socket)."""
    buf = array.array("i", [0])
    fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, buf, True)
    return buf[0]


def _ping(path: str) -> str:
    with Client(path, timeout_s=5) as c:
        return c.ping()


# --------------------------------------------------------------------------- runtime dir and socket
def test_creates_0700_dir_and_0600_socket(parent: Path, broker) -> None:
    path = parent / "run" / "mcp.sock"
    b = broker(str(path), umask=0)  # a permissive umask must not leak into the modes
    dst = os.lstat(path.parent)
    assert stat.S_ISDIR(dst.st_mode) and stat.S_IMODE(dst.st_mode) == 0o700
    assert dst.st_uid == os.geteuid()
    sst = os.lstat(path)
    assert stat.S_ISSOCK(sst.st_mode) and stat.S_IMODE(sst.st_mode) == 0o600
    assert sst.st_uid == os.geteuid()
    assert f"listening on {path}" in b.log_text()


def _dir_0755(parent: Path) -> tuple[Path, str]:
    d = parent / "run"
    d.mkdir()
    d.chmod(0o755)
    return d, f"a directory owned by uid {os.geteuid()} with mode 0755"


def _symlink_to_0700(parent: Path) -> tuple[Path, str]:
    real = parent / "real"
    real.mkdir()
    real.chmod(0o700)
    d = parent / "run"
    d.symlink_to(real)
    return d, f"a symlink owned by uid {os.geteuid()}"


def _foreign_owner(parent: Path) -> tuple[Path, str]:
    d = parent / "run"
    d.mkdir()
    d.chmod(0o700)
    os.chown(d, 65534, -1)
    return d, "a directory owned by uid 65534 with mode 0700"


@pytest.mark.parametrize("make_dir", [
    _dir_0755,
    _symlink_to_0700,
    pytest.param(_foreign_owner, marks=pytest.mark.root),
], ids=["mode-0755", "symlink-to-0700", "owned-by-65534"])
def test_refuses_an_unsafe_runtime_dir(serve_once, parent: Path, make_dir) -> None:
    d, found = make_dir(parent)
    path = d / "mcp.sock"
    res = serve_once(path)
    assert res.returncode != 0
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert str(d) in lines[0] and found in lines[0]
    assert not os.path.lexists(path)
    if d.is_symlink():
        assert os.listdir(d.resolve()) == []  # nothing was created through the link


def test_refuses_when_a_live_broker_answers(broker, serve_once) -> None:
    first = broker()
    inode = os.lstat(first.socket_path).st_ino
    res = serve_once(first.socket_path)
    assert res.returncode != 0
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and first.socket_path in lines[0] and "already listening" in lines[0], res.stderr
    # the first broker keeps serving on the very same socket file
    assert first.proc.poll() is None
    assert os.lstat(first.socket_path).st_ino == inode
    assert _ping(first.socket_path) == "pong"


def test_replaces_a_stale_socket(parent: Path, broker) -> None:
    run = parent / "run"
    run.mkdir(mode=0o700)
    run.chmod(0o700)
    path = str(run / "mcp.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # left behind, as by a crashed broker
    with pytest.raises(ConnectionRefusedError):
        _raw(path)
    b = broker(path)
    assert _ping(path) == "pong"  # the dead file was replaced by a live socket
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert f"listening on {path}" in b.log_text()


def test_refuses_a_regular_file_at_the_socket_path(serve_once, parent: Path) -> None:
    run = parent / "run"
    run.mkdir(mode=0o700)
    run.chmod(0o700)
    path = run / "mcp.sock"
    path.write_text("not a socket")
    res = serve_once(path)
    assert res.returncode != 0 and len(res.stderr.splitlines()) == 1 and str(path) in res.stderr
    assert path.read_text() == "not a socket"  # never unlinked


# --------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_down_cleanly(broker, sig: signal.Signals) -> None:
    b = broker()
    with Client(b.socket_path) as c:
        c.get_token("someone")
    assert b.stop(sig) == 0
    assert not os.path.lexists(b.socket_path)
    log = b.log_text()
    assert f"received {sig.name}" in log and "broker stopped" in log
    assert "Traceback" not in log


def test_long_poll_in_flight_at_sigterm_gets_its_response(broker) -> None:
    b = broker()
    s = _raw(b.socket_path)
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"get_token","params":{"instance_id":"waiter"}}\n')
    assert "result" in _read_lines(s, 1)[0]
    s.sendall(b'{"jsonrpc":"2.0","id":2,"method":"receive","params":{"wait_s":30}}\n')
    deadline = time.monotonic() + 10
    while _unread_outgoing(s):  # until the broker has read the receive request
        assert time.monotonic() < deadline, "the broker never read the receive request"
        time.sleep(0.005)
    t0 = time.monotonic()
    b.proc.send_signal(signal.SIGTERM)
    data, how = _read_until_eof(s)
    elapsed = time.monotonic() - t0
    s.close()
    assert how == "eof"
    frames = [json.loads(line) for line in data.split(b"\n") if line]
    assert frames == [{"jsonrpc": "2.0", "id": 2, "result": {"messages": []}}]
    assert elapsed < 10  # answered at shutdown, not after the 30 s wait
    assert b.proc.wait(10) == 0
    assert not os.path.lexists(b.socket_path)


# --------------------------------------------------------------------------- hostile input
def test_injection_and_path_traversal_over_a_raw_socket(broker) -> None:
    b = broker()
    s = _raw(b.socket_path)
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping; rm -rf /"}\n')
    (r1,) = _read_lines(s, 1)
    assert r1["id"] == 1 and r1["error"]["code"] == -32601 and "result" not in r1
    s.sendall(b'{"jsonrpc":"2.0","id":2,"method":"get_token","params":{"instance_id":"../../etc/passwd"}}\n')
    (r2,) = _read_lines(s, 1)
    assert r2["id"] == 2 and r2["error"]["code"] == -32602 and "result" not in r2
    # the connection survives both, and no such instance was created
    s.sendall(b'{"jsonrpc":"2.0","id":3,"method":"ping"}\n')
    assert _read_lines(s, 1) == [{"jsonrpc": "2.0", "id": 3, "result": "pong"}]
    s.close()
    with Client(b.socket_path) as c:
        c.get_token("auditor")
        assert [i.instance_id for i in c.list_instances()] == ["auditor"]
    assert os.path.exists("/etc/passwd")


def test_10mb_frame_gets_32004_and_close_then_others_are_served(broker) -> None:
    b = broker()
    s = _raw(b.socket_path)
    payload = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"A" * (10 * 1024 * 1024) + b'"}}\n'
    send_error: list[BaseException] = []

    def pump() -> None:
        try:
            s.sendall(payload)
        except OSError as exc:  # the broker hangs up mid-frame: expected
            send_error.append(exc)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    data, how = _read_until_eof(s)
    t.join(15)
    assert not t.is_alive()
    s.close()
    assert how in ("eof", "reset")
    frames = [json.loads(line) for line in data.split(b"\n") if line]
    assert len(frames) == 1, data[:500]
    err = frames[0]
    assert err["id"] is None and err["error"]["code"] == -32004
    assert err["error"]["data"]["reason"] == "frame_too_large"
    assert send_error, "the broker read all 10 MB instead of closing"
    # the broker is fine, and a fresh client is served
    assert b.proc.poll() is None
    assert _ping(b.socket_path) == "pong"
    assert '"event":"frame_too_large"' in b.log_text()


def test_audit_lines_are_written_under_log_level_warning(broker) -> None:
    bp = broker(None, "--log-level", "WARNING")
    with Client(bp.socket_path) as c:
        c.get_token("audited")
    deadline = time.monotonic() + 10
    while not any('"event":"token_issued"' in line for line in bp.audit_lines()):
        assert time.monotonic() < deadline, bp.log_text()
        time.sleep(0.05)
    assert "INFO parrot_ipc.server" not in bp.log_text()  # the level still quiets the INFO logs

