"""Send random and mutated frames to a live broker for as long as told (not a test).

Starts `parrot-ipc serve` (memory store, per-UID rate limit lifted) unless ``--socket`` names a running broker, then
sends frames for ``--seconds``: a mix of random bytes, valid requests with mutated params, and
valid requests with corrupted bytes, over a few connections (reconnecting whenever the broker
closes one, as it does after -32004). After every 1,000 frames a *fresh* client must get
``pong``; the run stops with exit 1 the first time it does not, or if the broker dies.

    .venv/bin/python benchmarks/fuzz_live.py --seconds 60 [--socket PATH] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

from parrot_ipc import Client
from parrot_ipc.core.broker import METHODS

FIELDS = ["instance_id", "token", "to", "content", "data", "idempotency_key", "from", "max", "wait_s",
          "ids", "new_id", "name"]
VALUES = [None, True, 0, -1, 2**63, 1e308, "", "x" * 70, "../../etc/passwd", "ok-name", [], {}, [1, "a"],
          {"a": {"b": [None]}}, "\u0000", "\ud7ff", "🦜"]


def frame(rng: random.Random, n: int) -> bytes:
    kind = rng.random()
    if kind < 0.005:
        return b'{"jsonrpc":"2.0","id":1,"method":"ping","x":"' + b"A" * 70_000 + b'"}\n'  # -32004, close
    if kind < 0.3:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))).replace(b"\n", b" ") + b"\n"
    params = {rng.choice(FIELDS): rng.choice(VALUES) for _ in range(rng.randint(0, 4))}
    req: dict[str, object] = {"jsonrpc": "2.0", "id": n, "method": rng.choice([*METHODS, "nope", ""]),
                              "params": params}
    if rng.random() < 0.1:
        del req["id"]
    data = json.dumps(req).encode()
    if kind > 0.8 and data:
        i = rng.randrange(len(data))
        data = data[:i] + bytes([rng.getrandbits(8)]) + data[i + 1 :]
        data = data.replace(b"\n", b" ")
    if kind > 0.95:
        data = b"[" * rng.randint(100, 5000) + data  # deep nesting
    return data + b"\n"


def _start_broker() -> tuple[subprocess.Popen[bytes], str]:
    """Start `parrot-ipc serve` (memory store, rate limit lifted) in a temp dir; wait for a pong."""
    d = tempfile.mkdtemp(prefix="pipc-fuzz-")
    path = os.path.join(d, "run", "mcp.sock")
    cfg = os.path.join(d, "config.toml")
    with open(cfg, "w") as f:  # the fuzzer and the pong checks share a UID: lift its rate limit
        f.write("[server]\nrate_per_s = 1000000\nburst = 1000000\n")
    proc = subprocess.Popen([sys.executable, "-m", "parrot_ipc", "serve", "--socket", path, "--store", "memory",
                             "--config", cfg, "--log-level", "ERROR"], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with Client(path) as c:
                c.ping()
            break
        except Exception:
            time.sleep(0.05)
    return proc, path


def _drain(s: socket.socket, codes: collections.Counter[int]) -> None:
    """Count the error codes in what has come back on ``s`` so far (the caller sets the first
    wait); raise ConnectionResetError if the broker closed it."""
    try:
        while True:
            data = s.recv(1 << 20)
            if not data:
                raise ConnectionResetError("closed by the broker")
            for line in data.split(b"\n"):
                if line.startswith(b"{") and b'"error"' in line:
                    with contextlib.suppress(ValueError):
                        codes[json.loads(line)["error"]["code"]] += 1
            s.settimeout(0)
    except (TimeoutError, BlockingIOError):
        pass


def _send_one(conns: list[socket.socket | None], i: int, path: str, data: bytes, sent: int,
              codes: collections.Counter[int]) -> bool:
    """Send ``data`` on connection ``i`` (opened if needed) and read back; False if the broker
    closed it (it is then dropped)."""
    s = conns[i]
    if s is None:
        s = conns[i] = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.settimeout(5)
    try:
        s.sendall(data)
        # Read what has come back without waiting per frame (notifications get no
        # response); every 100th frame waits briefly so responses are counted.
        s.settimeout(0.05 if sent % 100 == 0 else 0)
        _drain(s, codes)
        s.settimeout(5)
    except OSError:
        s.close()
        conns[i] = None
        return False
    return True


def _stop(conns: list[socket.socket | None], proc: subprocess.Popen[bytes] | None) -> None:
    for s in conns:
        if s is not None:
            s.close()
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--socket")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    proc = None
    path = args.socket
    if path is None:
        proc, path = _start_broker()
    rng = random.Random(args.seed)
    conns: list[socket.socket | None] = [None] * 4
    sent, checks, closes = 0, 0, 0
    codes: collections.Counter[int] = collections.Counter()
    stop_at = time.monotonic() + args.seconds
    try:
        while time.monotonic() < stop_at:
            i = rng.randrange(len(conns))
            if not _send_one(conns, i, path, frame(rng, sent), sent, codes):
                closes += 1
            sent += 1
            if sent % 1000 == 0:
                with Client(path, timeout_s=5) as fresh:
                    if fresh.ping() != "pong":
                        print("a fresh client got no pong", file=sys.stderr)
                        return 1
                checks += 1
            if proc is not None and proc.poll() is not None:
                print(f"the broker died (exit {proc.returncode}) after {sent} frames", file=sys.stderr)
                return 1
    finally:
        _stop(conns, proc)
    print(f"frames sent: {sent}; fresh-client pong checks passed: {checks}; connections closed by the broker: "
          f"{closes}; error codes seen: {dict(sorted(codes.items()))}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
