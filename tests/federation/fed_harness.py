"""Harness for federation tests: a real ``nats-server`` with JetStream on loopback, and nodes
(a ``parrot-ipc serve`` and a ``parrot-ipc relay`` per node, each with its own socket, state
directory and config). Nothing listens on any address but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from parrot_ipc import Client, ParrotError

_SCRUBBED_ENV = ("PARROT_IPC_DIR", "PARROT_IPC_SOCKET", "PARROT_IPC_SESSION", "PARROT_MAX_INPUT_SIZE")


def clean_env() -> dict[str, str]:
    """``os.environ`` without the parrot-ipc variables (as tests/conftest.py's)."""
    return {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}


def wait_for_ping(socket_path: str, proc: subprocess.Popen[bytes]) -> None:
    """Poll until a broker answers ``ping`` on ``socket_path``; fail if ``proc`` exits first."""
    def pong() -> bool:
        assert proc.poll() is None, f"broker exited with {proc.returncode}"
        try:
            with Client(socket_path, timeout_s=1.0) as c:
                return c.ping() == "pong"
        except (ParrotError, OSError):
            return False
    wait_until(pong, 15, f"a broker on {socket_path}")

NATS_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.05) -> None:
    """Poll ``pred`` until it is true; fail with ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class NatsServer:
    """A nats-server on 127.0.0.1:``port`` with JetStream in ``store_dir``; stop/start keep both."""

    port: int
    store_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [NATS_BIN, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False
        wait_until(up, 10, "nats-server to listen")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server (loopback only, a free port, JetStream under ``tmp_path``)."""
    if not os.path.exists(NATS_BIN):
        pytest.fail("nats-server is not installed (apt-get install nats-server; .ci/run does)")
    srv = NatsServer(free_port(), tmp_path / "js", tmp_path / "nats.log")
    srv.start()
    yield srv
    srv.stop()


@dataclass
class Node:
    """One host: its broker and its relay, with their files in ``root``."""

    name: str
    root: Path
    nats: NatsServer
    broker: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.root / "run" / "b.sock")

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def _spawn(self, what: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{what}.log").open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "parrot_ipc", *args], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log, env=clean_env())
        self.procs.append(proc)
        return proc

    def start_broker(self) -> None:
        self.broker = self._spawn("broker", "serve", "--socket", self.socket, "--config", str(self.config),
                                  "--state-dir", str(self.root / "state"), "--log-level", "INFO")
        wait_for_ping(self.socket, self.broker)

    def start_relay(self) -> None:
        self.relay = self._spawn("relay", "relay", "--socket", self.socket, "--config", str(self.config),
                                 "--log-level", "INFO")
        wait_until(lambda: "running" in self.log("relay") or self.relay.poll() is not None, 15,
                   f"relay {self.name} to start")
        assert self.relay.poll() is None, self.log("relay")

    def kill(self, which: str, sig: int = signal.SIGKILL) -> None:
        proc = getattr(self, which)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)
        setattr(self, which, None)

    def log(self, what: str) -> str:
        path = self.root / f"{what}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, name: str) -> Client:
        """A blocking client holding instance ``name`` on this node's broker."""
        try:
            c = Client(self.socket, timeout_s=30)
        except ParrotError as exc:
            rc = None if self.broker is None else self.broker.poll()
            raise AssertionError(f"{exc}; broker {self.name} exit code {rc}; its log:\n{self.log('broker')[-3000:]}") from None
        c.get_token(name)
        return c


NodeFactory = Callable[..., Node]


@pytest.fixture
def nodes(nats_server: NatsServer) -> Iterator[NodeFactory]:
    """Factory: ``nodes("h1", remote='...toml...', extra='...')`` starts a broker and a relay for
    node ``h1`` (short lease and ack-wait, so a crash is recovered in seconds)."""
    made: list[Node] = []

    def make(name: str, *, remote: str | None = None, extra: str = "", relay: bool = True) -> Node:
        root = Path(tempfile.mkdtemp(prefix=f"pfed-{name}-"))
        (root / "run").mkdir(mode=0o700)
        rules = remote if remote is not None else '[[remote]]\nnodes = ["*"]\n'
        text = (f'[server]\nnode = "{name}"\nlease_s = 2.0\nrate_per_s = 1000000.0\nburst = 1000000.0\n'
                f'{extra}\n[relay]\nservers = ["{nats_server.url}"]\nack_wait_s = 2.0\n\n{rules}')
        fd = os.open(root / "config.toml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        node = Node(name, root, nats_server)
        made.append(node)
        node.start_broker()
        if relay:
            node.start_relay()
        return node

    yield make
    procs = [proc for node in made for proc in reversed(node.procs) if proc.poll() is None]
    for proc in procs:  # the relays first: a broker then stops without a client holding on
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    for node in made:
        shutil.rmtree(node.root, ignore_errors=True)


def drain(client: Client, want: int, timeout_s: float) -> list:
    """Receive and ack until ``want`` messages arrived (or ``timeout_s`` passed); returns them."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        msgs = client.receive(max=1000, wait_s=0.5)
        if msgs:
            client.ack([m.id for m in msgs])
            got.extend(msgs)
    return got
