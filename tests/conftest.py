"""Shared fixtures: a real ``parrot-ipc serve`` subprocess, a CLI runner, and the ``root`` marker.

Root-marked tests create Unix users (or chown files to another uid). Without root they are
skipped, with the reason "needs root: creates Unix users", except under CI (``$CI`` set),
where they fail: CI must run the suite as root, so a skip there would hide them.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from parrot_ipc import Client, ParrotError

SERVE_START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 30.0
ROOT_SKIP_REASON = "needs root: creates Unix users"

# Variables that would change which socket or limits a subprocess uses behind the test's back.
_SCRUBBED_ENV = ("PARROT_IPC_DIR", "PARROT_IPC_SOCKET", "PARROT_IPC_SESSION", "PARROT_MAX_INPUT_SIZE")


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without the parrot-ipc variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(extra)
    return env


# --------------------------------------------------------------------------- root marker
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "root: needs root (creates Unix users); skipped with a reason otherwise")


_ROOT_REFUSED = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture runs: skip (locally) or fail (CI) a root-marked test when not root."""
    if item.get_closest_marker("root") is None or os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        item.stash[_ROOT_REFUSED] = True
        pytest.fail(f"{ROOT_SKIP_REASON}; CI (CI={os.environ['CI']!r}) must run the suite as root, "
                    f"but euid is {os.geteuid()}", pytrace=False)
    pytest.skip(ROOT_SKIP_REASON)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Report the CI refusal above as a test failure (FAILED), not a setup error."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "setup" and rep.failed and item.stash.get(_ROOT_REFUSED, False):
        rep.when = "call"


# --------------------------------------------------------------------------- throwaway accounts
def _pids_of(uid: int) -> list[int]:
    """The processes whose real UID is ``uid`` (proc(5), the ``Uid:`` line of /proc/<pid>/status)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uids = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile
        if int(uids.split()[1]) == uid:
            pids.append(int(status.parent.name))
    return pids


def _wait_until_no_process_of(uid: int, timeout_s: float = 10.0) -> None:
    """Before userdel: a test's processes of ``uid`` may still be dying (SIGKILL is delivered
    asynchronously, and a child of runuser is reaped by init after runuser exits). Poll /proc
    until none is left, killing stragglers."""
    deadline = time.monotonic() + timeout_s
    while pids := _pids_of(uid):
        assert time.monotonic() < deadline, f"processes of uid {uid} still running: {pids}"
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


class UnixAccounts:
    """Throwaway system users and groups (useradd(8), groupadd(8)) and world-readable work dirs,
    each a context manager that removes what it made. Root-marked tests only."""

    @staticmethod
    def _run(*cmd: str) -> None:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, f"{' '.join(cmd)} failed: {res.stderr}"

    @contextlib.contextmanager
    def group(self, prefix: str) -> Iterator[grp.struct_group]:
        name = f"{prefix}-{secrets.token_hex(3)}"
        self._run("groupadd", "--system", name)
        try:
            yield grp.getgrnam(name)
        finally:
            self._run("groupdel", name)

    @contextlib.contextmanager
    def user(self, prefix: str, *, groups: Sequence[str] = ()) -> Iterator[pwd.struct_passwd]:
        """A system user with no home and a nologin shell, in ``groups``; userdel'd and checked
        gone on exit."""
        name = f"{prefix}-{secrets.token_hex(3)}"
        extra = ["-G", ",".join(groups)] if groups else []
        self._run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", *extra, name)
        pw = pwd.getpwnam(name)
        try:
            assert pw.pw_uid != 0
            yield pw
        finally:
            _wait_until_no_process_of(pw.pw_uid)  # else userdel refuses: "currently used by process"
            self._run("userdel", name)
            with pytest.raises(KeyError):
                pwd.getpwnam(name)

    @contextlib.contextmanager
    def open_dir(self, prefix: str) -> Iterator[Path]:
        """A fresh directory of mode 0755 (other users may enter it), removed on exit."""
        d = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            d.chmod(0o755)
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def accounts() -> UnixAccounts:
    """:class:`UnixAccounts`; usable from fixtures of any scope."""
    return UnixAccounts()


# --------------------------------------------------------------------------- broker subprocess
@dataclass
class BrokerProcess:
    """A running ``parrot-ipc serve`` subprocess."""

    socket_path: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    owned_dirs: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        """Everything the broker wrote on stderr so far (logs and JSON audit lines)."""
        return self.log_path.read_text(errors="replace")

    def audit_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if "parrot_ipc.audit" in line]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` (if still running) and wait; SIGKILL after ``timeout_s``. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode


def wait_for_ping(socket_path: str, proc: subprocess.Popen[bytes] | None = None,
                  timeout_s: float = SERVE_START_TIMEOUT_S) -> None:
    """Poll until a broker answers ``ping`` on ``socket_path``; raise if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before answering ping")
        try:
            with Client(socket_path, timeout_s=1.0) as c:
                if c.ping() == "pong":
                    return
        except (ParrotError, OSError) as exc:
            last = exc
        time.sleep(0.02)
    raise TimeoutError(f"no pong on {socket_path} within {timeout_s} s (last error: {last})")


def serve_cmd(socket_path: str, *extra: str, state_dir: str | None = None) -> list[str]:
    """``serve`` on ``socket_path``; durable state in ``state_dir``, or a memory store without one
    (so no test touches the system state directory /var/lib/parrot-mcp)."""
    store = ["--store", "memory"] if state_dir is None else ["--state-dir", state_dir]
    if "--state-dir" in extra or "--store" in extra:
        store = []
    return [sys.executable, "-m", "parrot_ipc", "serve", "--socket", socket_path, *store, *extra]


BrokerFactory = Callable[..., BrokerProcess]


@pytest.fixture
def broker() -> Iterator[BrokerFactory]:
    """Factory: ``broker(socket_path=None, *extra_args, umask=None, wait=True)`` starts a broker.

    With no ``socket_path`` the socket is ``<fresh 0700 temp dir>/run/mcp.sock`` (short, so
    it stays under the 108-byte sun_path limit). Every broker started is stopped with
    SIGTERM at teardown (SIGKILL after 10 s), and the temp dirs it made are removed.
    """
    started: list[BrokerProcess] = []

    def start(socket_path: str | None = None, *extra_args: str, umask: int | None = None,
              wait: bool = True) -> BrokerProcess:
        owned: list[str] = []
        if socket_path is None:
            parent = tempfile.mkdtemp(prefix="pipc-")
            owned.append(parent)
            socket_path = os.path.join(parent, "run", "mcp.sock")
        logdir = tempfile.mkdtemp(prefix="pipc-log-")
        owned.append(logdir)
        log_path = Path(logdir) / "broker.log"
        with log_path.open("wb") as log:
            kwargs = {} if umask is None else {"umask": umask}
            cmd = serve_cmd(socket_path, *extra_args, state_dir=os.path.join(logdir, "state"))
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log, env=clean_env(), **kwargs)
        bp = BrokerProcess(socket_path, proc, log_path, owned)
        started.append(bp)
        if wait:
            try:
                wait_for_ping(socket_path, proc)
            except (RuntimeError, TimeoutError) as exc:
                pytest.fail(f"{exc}\n--- broker log ---\n{bp.log_text()}")
        return bp

    yield start
    for bp in started:
        try:
            bp.stop()
        except subprocess.TimeoutExpired:
            pass  # killed by stop()
        finally:
            for d in bp.owned_dirs:
                shutil.rmtree(d, ignore_errors=True)


def run_serve_once(socket_path: str | os.PathLike[str], timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` when it is expected to refuse to start (and so exit by itself)."""
    return subprocess.run(serve_cmd(os.fspath(socket_path)), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=clean_env(), timeout=timeout_s)


@pytest.fixture
def serve_once() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`run_serve_once` as a fixture: ``serve_once(socket_path)`` -> CompletedProcess."""
    return run_serve_once


# --------------------------------------------------------------------------- CLI
class CliResult(subprocess.CompletedProcess[str]):
    """A CompletedProcess that also records the CLI process's pid."""

    pid: int


def run_cli(socket_path: str, session_path: str | os.PathLike[str], *args: str, input: str | None = None,
            umask: int | None = None, timeout_s: float = CLI_TIMEOUT_S) -> CliResult:
    """Run ``python -m parrot_ipc ARGS`` with PARROT_IPC_SOCKET and PARROT_IPC_SESSION set."""
    cmd: Sequence[str] = [sys.executable, "-m", "parrot_ipc", *args]
    env = clean_env(PARROT_IPC_SOCKET=socket_path, PARROT_IPC_SESSION=os.fspath(session_path))
    kwargs = {} if umask is None else {"umask": umask}
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        res = CliResult(list(cmd), proc.returncode, out, err)
        res.pid = proc.pid
        return res


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """The :func:`run_cli` helper, as a fixture: ``cli(socket_path, session_path, *args)``."""
    return run_cli
