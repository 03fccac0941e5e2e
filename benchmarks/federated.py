"""The ``federated`` scenario: h1 -> h2 through a local nats-server (JetStream, loopback only),
two brokers each with its own relay, against the same-host ``deliver`` figure of the same run.

Senders on h1 send to ``<receiver>@h2``; receivers on h2 loop ``receive``/``ack``. Measured as
``deliver`` is (first send to last receive; latency send-to-receive), with fewer pairs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from .servers import BROKER_CONFIG, Server

NATS_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"
#: Sender/receiver pairs of the federated run (the same-host deliver uses deliver_pairs).
PAIRS = 4


def available() -> str | None:
    """None if nats-server and nats-py are there; else why not."""
    if not os.path.exists(NATS_BIN):
        return "nats-server is not installed (apt-get install nats-server)"
    with contextlib.suppress(ImportError):
        import nats  # noqa: F401

        return None
    return "nats-py is not installed (pip install -e '.[relay]')"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Node(Server):
    """One broker (SQLite store) plus its relay, for node ``name``."""

    kind = "node"

    def __init__(self, name: str, nats_url: str) -> None:
        super().__init__()
        cfg = os.path.join(self.dir, "config.toml")
        Path(cfg).write_text(f'{BROKER_CONFIG}node = "{name}"\n\n[relay]\nservers = ["{nats_url}"]\n\n'
                             '[[remote]]\nnodes = ["*"]\n')
        os.chmod(cfg, 0o600)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parrot_ipc", "serve", "--socket", self.sock, "--state-dir",
             os.path.join(self.dir, "state"), "--config", cfg, "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        log = Path(self.dir) / "relay.log"
        with log.open("wb") as f:
            self.relay = subprocess.Popen([sys.executable, "-m", "parrot_ipc", "relay", "--socket", self.sock,
                                           "--config", cfg], stdout=subprocess.DEVNULL, stderr=f)
        deadline = time.monotonic() + 20
        while "running" not in log.read_text(errors="replace"):
            if self.relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay {name} did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.relay.poll() is None:
            self.relay.send_signal(signal.SIGTERM)
            self.relay.wait(30)
        super().stop()


class Federation:
    """nats-server on 127.0.0.1 (a free port, JetStream in a temp dir) and nodes h1 and h2."""

    def __enter__(self) -> Federation:
        self.dir = tempfile.mkdtemp(prefix="pipc-bench-nats-")
        port = _free_port()
        self.nats = subprocess.Popen([NATS_BIN, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        url = f"nats://127.0.0.1:{port}"
        self.h1 = _Node("h1", url)
        self.h2 = _Node("h2", url)
        return self

    def __exit__(self, *exc: object) -> None:
        for node in (self.h1, self.h2):
            node.stop()
        self.nats.terminate()
        self.nats.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


#: One-at-a-time messages of the unloaded latency figure.
ONE_BY_ONE = 100


def one_by_one(fed: Federation, n: int) -> dict[str, float]:
    """``n`` messages h1 -> h2, each sent once the previous one arrived: p50/p99 in us of one
    message on an idle link (the relay's outbox poll included)."""
    from parrot_ipc import Client

    from .scenarios import pct
    lat: list[int] = []
    with Client(fed.h1.sock) as a, Client(fed.h2.sock) as b:
        a.get_token("lone-s")
        b.get_token("lone-r")
        for i in range(n):
            t0 = time.perf_counter_ns()
            a.send("lone-r@h2", str(i))
            msgs = b.receive(max=1, wait_s=30)
            lat.append(time.perf_counter_ns() - t0)
            assert msgs and msgs[0].content == str(i), msgs
            b.ack([msgs[0].id])
    return {"idle_p50_latency_us": pct(lat, 0.5) / 1000, "idle_p99_latency_us": pct(lat, 0.99) / 1000}


def federated(per_sender: int, window: int) -> dict[str, Any]:
    """``PAIRS`` senders on h1 -> receivers on h2 (``per_sender`` each): msgs/s, p50/p99 us
    under that load; then :data:`ONE_BY_ONE` messages one at a time (idle-link latency)."""
    from .scenarios import _deliver

    with Federation() as fed:
        loaded = trio.run(_deliver, fed.h1.sock, PAIRS, per_sender, window, "f", fed.h2.sock, "@h2")
        return {**loaded, **one_by_one(fed, ONE_BY_ONE)}
