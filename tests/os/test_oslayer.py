"""The OS layer: SO_PEERCRED, the runtime directory checks, and the socket's bind rules."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from parrot_ipc.errors import StartupError
from parrot_ipc.os import paths as os_paths
from parrot_ipc.os import peer as os_peer


def test_peer_credentials_of_a_socketpair_are_our_own() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        cred = os_peer.peer_credentials(a)
    assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())


def test_peer_pidfd_is_a_pidfd_or_none() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        fd = os_peer.peer_pidfd(a)
    if fd is None:
        pytest.skip("this kernel has no SO_PEERPIDFD")
    try:
        # A pidfd names our own process: /proc/self/fdinfo says which pid it refers to.
        info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        assert f"Pid:\t{os.getpid()}" in info
    finally:
        os.close(fd)


def test_default_socket_path_order() -> None:
    assert os_paths.default_socket_path(0, {}) == "/run/parrot-mcp/mcp.sock"
    assert os_paths.default_socket_path(0, {"XDG_RUNTIME_DIR": "/run/user/0"}) == "/run/parrot-mcp/mcp.sock"
    assert os_paths.default_socket_path(1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == \
        "/run/user/1000/parrot-mcp/mcp.sock"
    # Issue 16: without XDG_RUNTIME_DIR a non-root user falls back to its own /tmp directory.
    assert os_paths.default_socket_path(1000, {}) == "/tmp/parrot-ipc-1000/mcp.sock"
    env = {"PARROT_IPC_DIR": "/srv/p", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert os_paths.default_socket_path(1000, env) == "/srv/p/mcp.sock"


def test_runtime_dir_is_created_0700_even_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        os_paths.ensure_runtime_dir(str(tmp_path / "run"))
    finally:
        os.umask(old)
    st = os.lstat(tmp_path / "run")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()


def test_runtime_dir_with_loose_mode_is_refused_naming_path_owner_mode(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(0o755)
    with pytest.raises(StartupError) as info:
        os_paths.ensure_runtime_dir(str(d))
    msg = str(info.value)
    assert str(d) in msg and "0755" in msg and f"uid {os.geteuid()}" in msg and "\n" not in msg


def test_runtime_dir_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "run"
    link.symlink_to(real)
    with pytest.raises(StartupError, match="symlink"):
        os_paths.ensure_runtime_dir(str(link))


def test_runtime_dir_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    with pytest.raises(StartupError, match="owned by uid"):
        os_paths.ensure_runtime_dir(str(d), euid=os.geteuid() + 12345)


def test_runtime_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "run"
    f.write_text("x")
    with pytest.raises(StartupError, match=r"is a regular file owned by uid .* not a directory"):
        os_paths.ensure_runtime_dir(str(f))


def test_bind_makes_a_0600_socket_and_remove_socket_checks_the_inode(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    old = os.umask(0)
    try:
        sock, inode = os_paths.bind_listener(path)
    finally:
        os.umask(old)
    with sock:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert os.umask(0o022) == 0o022  # our umask was restored after the bind
    os.unlink(path)
    Path(path).write_text("not ours any more")
    os_paths.remove_socket(path, inode)  # a different inode now: left alone
    assert Path(path).read_text() == "not ours any more"


def test_bind_refuses_while_a_live_listener_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    first, _ = os_paths.bind_listener(path)
    with first, pytest.raises(StartupError, match="already listening"):
        os_paths.bind_listener(path)


def test_bind_replaces_a_stale_socket_file(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays; connecting to it is refused
    sock, inode = os_paths.bind_listener(path)
    with sock:
        assert os.lstat(path).st_ino == inode


def test_bind_never_unlinks_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    path.write_text("precious")
    with pytest.raises(StartupError, match="not a socket of ours"):
        os_paths.bind_listener(str(path))
    assert path.read_text() == "precious"


def test_bind_refuses_a_symlink_at_the_socket_path(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("x")
    (tmp_path / "s.sock").symlink_to(target)
    with pytest.raises(StartupError):
        os_paths.bind_listener(str(tmp_path / "s.sock"))
    assert target.read_text() == "x"


def _in_child(code: str) -> str:
    """Run ``code`` in a fresh interpreter (rlimits changed there do not leak into pytest)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout + out.stderr


def test_raise_nofile_limit_raises_the_soft_limit_and_never_past_the_hard_one() -> None:
    out = _in_child(
        "import resource\n"
        "from parrot_ipc.os.limits import raise_nofile_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))\n"
        "print(raise_nofile_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "print(raise_nofile_limit(50000), resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    assert out.splitlines() == ["(1000, 4096) (1000, 4096)", "(4096, 4096) (4096, 4096)"]


def test_broker_start_up_logs_when_the_hard_limit_cannot_fit_max_connections() -> None:
    out = _in_child(
        "import logging, resource\n"
        "logging.basicConfig(level=logging.DEBUG, format='%(levelname)s %(message)s')\n"
        "from parrot_ipc.app.daemon import _fit_nofile_limit\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 512))\n"
        "_fit_nofile_limit(10000)\n"
        "print('soft', resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    assert "WARNING RLIMIT_NOFILE hard limit is 512, lower than max_connections" in out, out
    assert "soft 512" in out
