"""Test harness for the sans-I/O core: a fake clock, an audit recorder, and peers.

Everything goes through the core's public surface: ``Broker.accept`` with kernel-style
credentials and ``Broker.handle_frame`` with raw NDJSON frames. Responses are decoded with the
standard library's ``json`` (not msgspec), so the tests do not share a codec with the code under
test.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from parrot_ipc.core import (
    Admission,
    Broker,
    BrokerConfig,
    Connection,
    DefaultPolicy,
    PeerCredentials,
    Push,
    WaitForMail,
)
from parrot_ipc.core.policy import DEFAULT_SCOPES, Policy

BROKER_UID = 1000
AUTO: Any = object()  # request id chosen by the peer (1, 2, 3, ...)
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class FakeClock:
    """Wall clock for the broker: seconds since the epoch, moved only by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProcess:
    """A :class:`parrot_ipc.core.policy.ProcessProbe` the test moves: set ``exe`` to what the
    process runs now (None: it cannot be read), as an exec(2) would change it."""

    def __init__(self, exe: str | None) -> None:
        self.now: str | None = exe
        self.calls = 0
        self.closed = False

    def exe(self) -> str | None:
        self.calls += 1
        return None if self.closed else self.now

    def close(self) -> None:
        self.closed = True


class AuditLog(list[tuple[str, dict[str, Any]]]):
    """An audit sink that records every ``(event, fields)`` pair."""

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        self.append((event, dict(fields)))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self if name == event]


class DeterministicTokens:
    """``token_bytes`` replacement: distinct, reproducible bytes, remembered for inspection."""

    def __init__(self) -> None:
        self.issued: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = hashlib.sha256(b"token-%d" % len(self.issued)).digest()[:n]
        self.issued.append(out)
        return out


class AdmitAll:
    """A policy that admits every peer with the given scopes (default: all but admin)."""

    def __init__(self, scopes: frozenset[str] = DEFAULT_SCOPES) -> None:
        self.scopes = scopes

    def admit(self, peer: PeerCredentials) -> Admission:
        return Admission(True, "test", scopes=self.scopes)


def decode(frame: bytes) -> dict[str, Any]:
    """One response/notification frame: exactly one line, ending in ``\\n``, holding a JSON object."""
    assert isinstance(frame, bytes), frame
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1, frame
    obj = json.loads(frame)
    assert isinstance(obj, dict) and obj.get("jsonrpc") == "2.0", obj
    return obj


class RpcFailure(AssertionError):
    pass


class Peer:
    """One admitted connection, with helpers that send requests and decode the replies."""

    def __init__(self, harness: Harness, conn: Connection) -> None:
        self.harness = harness
        self.broker = harness.broker
        self.conn = conn
        self.token: str | None = None
        self._ids = itertools.count(1)

    @property
    def uid(self) -> int:
        return self.conn.peer.uid

    def send_frame(self, frame: bytes) -> Any:
        return self.broker.handle_frame(self.conn, frame)

    def request(self, method: str, params: dict[str, Any] | None = None, *, rid: Any = AUTO) -> Any:
        """Send one request; return the raw ``handle_frame`` outcome (bytes, WaitForMail or None)."""
        rid = next(self._ids) if rid is AUTO else rid
        obj: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            obj["params"] = params
        return self.send_frame(json.dumps(obj).encode())

    def call(self, method: str, params: dict[str, Any] | None = None, *, rid: Any = AUTO) -> dict[str, Any]:
        """Send one request and decode the response, checking that it echoes the id."""
        rid = next(self._ids) if rid is AUTO else rid
        out = self.request(method, params, rid=rid)
        resp = decode(out)
        assert resp["id"] == rid, resp
        assert ("result" in resp) != ("error" in resp), resp
        return resp

    def ok(self, method: str, params: dict[str, Any] | None = None) -> Any:
        resp = self.call(method, params)
        if "error" in resp:
            raise RpcFailure(f"{method} failed: {resp['error']}")
        return resp["result"]

    def err(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self.call(method, params)
        if "error" not in resp:
            raise RpcFailure(f"{method} unexpectedly succeeded: {resp['result']}")
        error = resp["error"]
        assert isinstance(error["data"]["reason"], str) and error["data"]["reason"], error
        return error

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a JSON-RPC notification (no ``id``) and check that nothing is answered."""
        obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            obj["params"] = params
        assert self.send_frame(json.dumps(obj).encode()) is None

    def receive(self, **params: Any) -> list[dict[str, Any]]:
        return self.ok("receive", params)["messages"]

    def wait_receive(self, **params: Any) -> WaitForMail:
        out = self.request("receive", params)
        assert isinstance(out, WaitForMail), out
        return out


class Harness:
    """A broker with a fake clock, recorded audit events and deterministic tokens."""

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        policy: Policy | None = None,
        shared_secret: bytes | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.audit = AuditLog()
        self.tokens = DeterministicTokens()
        self.broker = Broker(
            config=config,
            policy=policy if policy is not None else DefaultPolicy(BROKER_UID),
            clock=self.clock,
            token_bytes=self.tokens,
            audit=self.audit,
            shared_secret=shared_secret,
        )
        self._pids = itertools.count(4000)

    def connect(self, uid: int = BROKER_UID, gid: int | None = None) -> Peer:
        conn = self.broker.accept(PeerCredentials(next(self._pids), uid, uid if gid is None else gid))
        assert isinstance(conn, Connection), conn
        return Peer(self, conn)

    def register(self, instance_id: str, uid: int = BROKER_UID) -> Peer:
        """Connect and take a session as ``instance_id``."""
        peer = self.connect(uid)
        result = peer.ok("get_token", {"instance_id": instance_id})
        assert result["instance_id"] == instance_id
        peer.token = result["token"]
        return peer

    def pushes(self) -> list[tuple[Connection, dict[str, Any]]]:
        """Hand over the Push effects so far, decoded: ``(connection, notification)``."""
        return [(e.conn, decode(e.frame)) for e in self.broker.take_effects() if isinstance(e, Push)]
