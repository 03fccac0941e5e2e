"""Issue 16, "CLI and first contact": each newcomer's case, run as a fresh non-root user.

The user is made by the ``accounts`` fixture (no home, nologin shell). The test venv may live
where other users cannot read it (under /root in CI), so the CLI runs from a world-readable
copy: ``src/parrot_ipc`` and the packages it imports at run time, under /usr/bin/python3 (the
same minor version as the venv: the copied msgspec is a compiled extension).
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import parrot_ipc

pytestmark = pytest.mark.root

SYSTEM_PYTHON = "/usr/bin/python3"
TIMEOUT_S = 30.0
#: What ``python -m parrot_ipc`` imports at run time (CLI, serve, top), besides the stdlib.
RUNTIME_MODULES = ("typer", "click", "rich", "msgspec", "trio", "shellingham", "annotated_doc",
                   "markdown_it", "mdurl", "pygments", "sniffio", "attr", "attrs", "outcome",
                   "sortedcontainers", "idna", "typing_extensions")


def _copy_module(name: str, dest: Path) -> None:
    mod = importlib.import_module(name)
    src = Path(mod.__file__ or "")
    if src.name == "__init__.py":
        shutil.copytree(src.parent, dest / src.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(src, dest / src.name)


@dataclass
class Newcomer:
    """A fresh non-root user, its own 0700 work dir, and the world-readable install."""

    name: str
    uid: int
    gid: int
    home: Path  # owned by the user, 0700: the session file and its broker's socket live here
    site: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A login-like environment (``su -``, ``runuser``): no XDG_RUNTIME_DIR, no PARROT_*."""
        base = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8", "COLUMNS": "100",
                "PYTHONPATH": str(self.site), "PARROT_IPC_SESSION": str(self.home / "session")}
        return base | extra

    def cmd(self, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--",
                SYSTEM_PYTHON, "-m", "parrot_ipc", *args]

    def run(self, *args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(self.cmd(*args), input=stdin, capture_output=True, timeout=TIMEOUT_S,
                             env=self.env(**env), cwd=self.home)
        return subprocess.CompletedProcess(res.args, res.returncode, res.stdout.decode(errors="replace"),
                                           res.stderr.decode(errors="replace"))

    def serve(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.home / "serve.log").open("ab")
        return subprocess.Popen(self.cmd("serve", "--store", "memory", *args), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log, env=self.env(**env), cwd=self.home)


def _no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr


def _refused_in_words(res: subprocess.CompletedProcess[str], *said: str, unsaid: str | None = None) -> None:
    """A usage error explained in words: no traceback, exit code 2, every one of ``said`` on
    stderr and ``unsaid`` (when given) not on it."""
    _no_traceback(res)
    assert res.returncode == 2, res.stderr
    for words in said:
        assert words in res.stderr, res.stderr
    if unsaid is not None:
        assert unsaid not in res.stderr, res.stderr


@pytest.fixture(scope="module")
def newcomer(accounts) -> Iterator[Newcomer]:
    if not os.access(SYSTEM_PYTHON, os.X_OK) or not shutil.which("setpriv"):
        pytest.fail("needs /usr/bin/python3 and setpriv to run the CLI as another user")
    ver = subprocess.run([SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    if ver != str(sys.version_info[:2]):
        pytest.fail(f"{SYSTEM_PYTHON} is {ver}, the venv {sys.version_info[:2]}: the copied msgspec would not load")
    with accounts.open_dir("pipc-nc-") as root, accounts.user("parrot-nc") as pw:
        site = root / "site"
        site.mkdir()
        shutil.copytree(Path(parrot_ipc.__file__).parent, site / "parrot_ipc",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in RUNTIME_MODULES:
            _copy_module(name, site)
        subprocess.run(["chmod", "-R", "a+rX", str(site)], check=True)
        home = root / "home"
        home.mkdir(mode=0o700)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        fallback = Path(f"/tmp/parrot-ipc-{pw.pw_uid}")
        try:
            yield Newcomer(pw.pw_name, pw.pw_uid, pw.pw_gid, home, site)
        finally:
            shutil.rmtree(fallback, ignore_errors=True)


def _wait_pong(nc: Newcomer, proc: subprocess.Popen[bytes], *args: str) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        res = nc.run("ping", *args)
        if res.returncode == 0 or proc.poll() is not None or time.monotonic() > deadline:
            return res
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def own_broker(newcomer: Newcomer) -> Iterator[str]:
    """A broker run by the newcomer in its own dir; yields the socket path."""
    sock = str(newcomer.home / "run" / "mcp.sock")
    proc = newcomer.serve("--socket", sock)
    try:
        res = _wait_pong(newcomer, proc, "--socket", sock)
        assert res.returncode == 0, (res.stderr, (newcomer.home / "serve.log").read_text())
        yield sock
    finally:
        _stop(proc)
        shutil.rmtree(newcomer.home / "run", ignore_errors=True)
        (newcomer.home / "session").unlink(missing_ok=True)


# --------------------------------------------------------------------------- 1: no XDG_RUNTIME_DIR
def test_1_without_xdg_runtime_dir_serve_and_clients_meet_in_a_private_tmp_dir(newcomer: Newcomer) -> None:
    fallback = Path(f"/tmp/parrot-ipc-{newcomer.uid}")
    shutil.rmtree(fallback, ignore_errors=True)
    proc = newcomer.serve()
    try:
        res = _wait_pong(newcomer, proc)
        assert res.returncode == 0, (res.stderr, (newcomer.home / "serve.log").read_text())
        assert f"pong from {fallback}/mcp.sock" in res.stdout
        st = fallback.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == newcomer.uid and stat.S_IMODE(st.st_mode) == 0o700
        log = (newcomer.home / "serve.log").read_text()
        assert f"XDG_RUNTIME_DIR is unset: using the per-user directory {fallback}" in log
    finally:
        _stop(proc)


def test_1_a_fallback_dir_made_by_someone_else_is_refused(newcomer: Newcomer) -> None:
    """As tmux refuses /tmp/tmux-UID: root (standing in for another user) made it first."""
    fallback = Path(f"/tmp/parrot-ipc-{newcomer.uid}")
    shutil.rmtree(fallback, ignore_errors=True)
    fallback.mkdir(mode=0o777)
    fallback.chmod(0o777)
    try:
        res = newcomer.run("ping")
        _no_traceback(res)
        assert res.returncode == 3
        assert "refusing an unsafe socket directory" in res.stderr and str(fallback) in res.stderr
        srv = newcomer.run("serve", "--store", "memory")
        _no_traceback(srv)
        assert srv.returncode == 1 and "refusing to start" in srv.stderr and str(fallback) in srv.stderr
    finally:
        shutil.rmtree(fallback, ignore_errors=True)


# --------------------------------------------------------------------------- 2: doctor vs root's broker
def test_2_doctor_as_a_user_against_roots_broker_gives_a_row_not_a_traceback(newcomer: Newcomer, broker,
                                                                          accounts) -> None:
    with accounts.open_dir("pipc-rb-") as parent:
        b = broker(str(parent / "run" / "mcp.sock"))
        res = newcomer.run("doctor", "--socket", b.socket_path)
    _no_traceback(res)
    assert res.returncode in (0, 1)
    assert f"cannot check {b.socket_path} as uid {newcomer.uid}: Permission denied" in res.stdout
    assert "sudo parrot-ipc doctor" in res.stdout


# --------------------------------------------------------------------------- 3-6, 9: agent commands
def test_3_a_message_that_is_not_utf8_is_refused_in_words(newcomer: Newcomer, own_broker: str) -> None:
    assert newcomer.run("register", "alice", PARROT_IPC_SOCKET=own_broker).returncode == 0
    res = newcomer.run("send", "alice", "-", stdin=b"caf\xe9", PARROT_IPC_SOCKET=own_broker)
    _refused_in_words(res, "the message is not UTF-8 text (byte 0xe9 at offset 3)")


def test_4_a_10_mb_message_is_refused_before_sending_with_the_limit(newcomer: Newcomer, own_broker: str) -> None:
    assert newcomer.run("register", "alice", PARROT_IPC_SOCKET=own_broker).returncode == 0
    res = newcomer.run("send", "alice", "-", stdin=b"a" * 10_000_000, PARROT_IPC_SOCKET=own_broker)
    _refused_in_words(res, "the broker takes at most 65536 bytes per request",
                      "Put the data in a file and send its path", unsaid="cannot reach the broker")


def test_5_a_bad_instance_name_is_explained_in_words(newcomer: Newcomer, own_broker: str) -> None:
    res = newcomer.run("register", "my agent", PARROT_IPC_SOCKET=own_broker)
    _refused_in_words(res, "' ' at position 3 is not allowed",
                      "1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit", unsaid="regex")


def test_6_a_typo_in_the_recipient_names_the_closest_instance(newcomer: Newcomer, own_broker: str) -> None:
    assert newcomer.run("register", "bob", PARROT_IPC_SOCKET=own_broker).returncode == 0
    res = newcomer.run("send", "bobb", "hi", PARROT_IPC_SOCKET=own_broker)
    assert res.returncode == 0 and "to bobb (queued)" in res.stdout
    assert "no instance named 'bobb' has registered yet" in res.stderr and "Did you mean 'bob'?" in res.stderr
    known = newcomer.run("send", "bob", "hi", PARROT_IPC_SOCKET=own_broker)
    assert known.returncode == 0 and "note:" not in known.stderr


def test_9_register_will_not_silently_take_over_a_live_session(newcomer: Newcomer, own_broker: str) -> None:
    assert newcomer.run("register", "bob", PARROT_IPC_SOCKET=own_broker).returncode == 0
    res = newcomer.run("register", "carol", PARROT_IPC_SOCKET=own_broker)
    _refused_in_words(res, "holds the live session of 'bob'", "--force")
    who = newcomer.run("whoami", PARROT_IPC_SOCKET=own_broker)
    assert who.returncode == 0 and who.stdout.startswith("bob "), who
    forced = newcomer.run("register", "carol", "--force", PARROT_IPC_SOCKET=own_broker)
    assert forced.returncode == 0 and "note: replacing the live session of 'bob'" in forced.stderr
    again = newcomer.run("register", "carol", PARROT_IPC_SOCKET=own_broker)  # same name: no --force needed
    assert again.returncode == 0 and "replacing the live session of 'carol'" in again.stderr


# --------------------------------------------------------------------------- 7, 8: options and help
def test_7_global_options_before_the_command_and_version(newcomer: Newcomer, own_broker: str) -> None:
    res = newcomer.run("--socket", own_broker, "ping")
    assert res.returncode == 0 and f"pong from {own_broker}" in res.stdout, res.stderr
    js = newcomer.run("--json", "--socket", own_broker, "ping")
    assert js.returncode == 0 and '"result": "pong"' in js.stdout, js.stderr
    after = newcomer.run("--socket", "/nonexistent/x.sock", "ping", "--socket", own_broker)
    assert after.returncode == 0, after.stderr  # the option after the command wins
    ver = newcomer.run("--version")
    assert ver.returncode == 0 and ver.stdout.strip() == f"parrot-ipc {parrot_ipc.__version__}"


def test_8_help_shows_argument_names_and_no_bool_labels(newcomer: Newcomer) -> None:
    res = newcomer.run("send", "--help")
    assert res.returncode == 0, res.stderr
    assert "send [OPTIONS] TO MESSAGE" in res.stdout
    assert "{to}" not in res.stdout and "<bool>" not in res.stdout and "<str>" not in res.stdout
    top = newcomer.run("--help")
    assert "--socket" in top.stdout and "--version" in top.stdout and "<bool>" not in top.stdout
