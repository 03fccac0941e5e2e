"""Server processes for the suite: the parrot-ipc broker (SQLite store), the floor, redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parrot_ipc import Client

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: The broker's [server] settings for the suite. The defaults would rate-limit it (2000 frames/s
#: per UID, 1024 connections per UID, 10,000 messages per mailbox); everything else is default.
BROKER_CONFIG = """\
[server]
rate_per_s = 1e9
burst = 1e9
max_connections = 12000
max_connections_per_uid = 12000
max_mailbox_messages = 10000000
max_mailbox_bytes = 17179869184
max_unclaimed_mailboxes = 100000
max_sender_queued_messages = 100000000
max_sender_queued_bytes = 1099511627776
handshake_timeout_s = 600.0
idle_timeout_s = 3600.0
"""


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` from /proc, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Server:
    """A server child process on a Unix socket in a fresh temporary directory."""

    kind = "?"

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"pipc-bench-{self.kind}-")
        self.sock = os.path.join(self.dir, "run", "s.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode}")
            try:
                with Client(self.sock, timeout_s=2) as c:
                    c.ping()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ParrotServer(Server):
    """``parrot-ipc serve`` with the durable SQLite store (durability normal) in a fresh state dir."""

    kind = "parrot"

    def __init__(self) -> None:
        super().__init__()
        cfg = os.path.join(self.dir, "config.toml")
        Path(cfg).write_text(BROKER_CONFIG)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parrot_ipc", "serve", "--socket", self.sock, "--store", "sqlite",
             "--state-dir", os.path.join(self.dir, "state"), "--config", cfg, "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()


class FloorServer(Server):
    """``benchmarks/floor.py``: the minimal trio + msgspec NDJSON server."""

    kind = "floor"

    def __init__(self) -> None:
        super().__init__()
        os.makedirs(os.path.dirname(self.sock), mode=0o700)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "floor.py"), self.sock],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()


def make_server(kind: str) -> Server:
    return ParrotServer() if kind == "parrot" else FloorServer()


class RedisServer(Server):
    """redis-server on a Unix socket only, ``appendonly yes``, ``appendfsync everysec``."""

    kind = "redis"

    def __init__(self) -> None:
        super().__init__()
        os.makedirs(os.path.dirname(self.sock), mode=0o700)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.sock, "--unixsocketperm", "700",
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    @staticmethod
    def available() -> str | None:
        """None if redis-server and redis-py are both there; else why not."""
        if shutil.which("redis-server") is None:
            return "redis-server is not installed"
        with contextlib.suppress(ImportError):
            import redis  # noqa: F401

            return None
        return "redis-py is not installed (pip install -e '.[bench]')"
