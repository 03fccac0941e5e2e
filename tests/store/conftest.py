"""Helpers for the store tests: a real broker subprocess on a temporary socket and state dir."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from parrot_ipc import BrokerUnavailable, Client
from parrot_ipc.store.schema import MIGRATIONS


@dataclass
class BrokerProcess:
    """Starts, SIGTERMs and SIGKILLs ``python -m parrot_ipc serve`` on ``socket`` / ``state_dir``."""

    socket: str
    state_dir: str
    config: str | None = None
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    def start(self, timeout_s: float = 15.0) -> None:
        cmd = [sys.executable, "-m", "parrot_ipc", "serve", "--socket", self.socket,
               "--state-dir", self.state_dir, "--log-level", "WARNING", *self.extra]
        if self.config:
            cmd += ["--config", self.config]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                with Client(self.socket, timeout_s=2) as c:
                    c.ping()
                return
            except (BrokerUnavailable, TimeoutError):
                time.sleep(0.05)
        raise RuntimeError("broker did not start in time")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=20)
        self.proc = None
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture
def broker_proc(tmp_path: Path) -> Iterator[BrokerProcess]:
    run = tmp_path / "run"
    cfg = tmp_path / "broker.toml"
    cfg.write_text("[server]\nlease_s = 2.0\n")
    bp = BrokerProcess(str(run / "mcp.sock"), str(tmp_path / "state"), str(cfg), tmp_path / "broker.log")
    yield bp
    if bp.proc is not None and bp.proc.poll() is None:
        bp.proc.kill()
        bp.proc.wait()


def database_at_version(path: Path, version: int) -> sqlite3.Connection:
    """A database at schema ``version`` (the first ``version`` migrations applied, with their
    ``user_version``), for a test of the next migration. Autocommit; the caller closes it."""
    db = sqlite3.connect(str(path), isolation_level=None)
    for number, ddl in enumerate(MIGRATIONS[:version], start=1):
        for stmt in ddl.split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute(f"PRAGMA user_version = {number}")
    return db


def vm_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``VmRSS`` of /proc/<pid>/status, proc(5))."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")

