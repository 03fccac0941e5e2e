"""``parrot-ipc relay``: the bridge between one broker and NATS JetStream (docs/federation.md).

It runs on asyncio with nats-py (the maintained NATS client), which is why it is a process of
its own: the broker stays trio and ``AF_UNIX`` only. It is a client of its own broker, admitted
with the ``relay`` scope; it talks to the broker with the blocking :class:`~.blocking.Client`:
one connection outbound and :data:`INBOUND_LANES` inbound, each in its own worker thread (a
one-thread executor), so a blocking call never stalls the event loop.

- Outbound: ``relay_take`` leases outbox messages; each is published to the JetStream subject
  ``parrot.<node>.<name>`` with the ``Nats-Msg-Id`` header ``<thisnode>-<message id>`` (message
  ids of two brokers may coincide; JetStream drops a repeat inside its duplicate window), and
  ``relay_ack`` deletes it only after JetStream's publish ack. A failed publish leaves it
  leased; the lease runs out (``lease_s``) and it is taken again.
- Inbound: a durable pull consumer ``parrot-<thisnode>`` on ``parrot.<thisnode>.>``; each
  message goes to ``relay_deliver`` (the remote id is the idempotency key) and is acked to
  JetStream only after the broker answered, which it does only after its commit.

At-least-once on both hops, and the idempotency key keeps a repeat out of the mailbox.
Sources: NATS JetStream docs (``Nats-Msg-Id`` de-duplication, pull consumers, explicit ack),
nats-py (``js.publish``, ``js.pull_subscribe``, ``fetch``, ``msg.ack``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec

from ..core import protocol as p
from ..core.federation import POSTMASTER, split_address
from ..errors import BrokerUnavailable, ErrorCode, ParrotError
from .blocking import Client

log = logging.getLogger("parrot_ipc.relay")
T = TypeVar("T")

#: Seconds between outbox polls when it was empty (doubling up to :data:`MAX_IDLE_POLL_S`).
IDLE_POLL_S: Final = 0.005
MAX_IDLE_POLL_S: Final = 0.05
#: Seconds to wait before retrying after the broker or NATS failed.
RETRY_S: Final = 0.2
#: Inbound broker connections (each with its thread); a recipient always uses the same one,
#: so its mail arrives in order while other recipients' mail is delivered beside it.
INBOUND_LANES: Final = 16


class RemoteMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The JSON payload of one JetStream message: the sender's ``node``, its message ``id``
    there, the bare sender ``from`` and recipient ``to``, ``content``, ``data``, ``sent_at``
    (RFC 3339) and ``bounce`` (a refusal coming back)."""

    id: str
    node: str
    from_: str = msgspec.field(name="from")
    to: str
    content: str
    data: dict[str, Any] | None = None
    sent_at: str = ""
    bounce: bool = False


_decode_remote: Final = msgspec.json.Decoder(RemoteMessage).decode


@dataclass(frozen=True)
class RelaySettings:
    """What one relay needs.

    Attributes:
        node: this broker's node name (``[server] node``).
        socket: the broker's socket path.
        servers: NATS server URLs (``tls://host:4222`` for TLS).
        credentials: the bytes of a NATS credentials file (user JWT and nkey seed), already
            read through :func:`parrot_ipc.os.files.read_private_file`, or None.
        tls: an SSL context (CA, client cert) or None.
        stream: the JetStream stream name (subjects ``parrot.>``).
        batch: messages per ``relay_take`` and per JetStream fetch (1-1000).
        ack_wait_s: seconds JetStream waits for our ack before it redelivers.
        create_stream: create the stream if it is missing (needs ``$JS.API`` permission).
    """

    node: str
    socket: str | None
    servers: list[str]
    credentials: bytes | None = None
    tls: ssl.SSLContext | None = None
    stream: str = "PARROT"
    batch: int = 100
    ack_wait_s: float = 30.0
    create_stream: bool = True


class BrokerLink:
    """One blocking broker client driven from asyncio through its own thread; reconnects
    (every :data:`RETRY_S` seconds) when the broker goes away, and retries the call."""

    def __init__(self, socket: str | None) -> None:
        self._socket = socket
        self._client: Client | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parrot-relay")

    def _call(self, fn: Callable[[Client], T]) -> T:
        if self._client is None:
            self._client = Client(self._socket, timeout_s=30.0)
        try:
            return fn(self._client)
        except (OSError, BrokerUnavailable):
            self._client.close()
            self._client = None
            raise

    async def call(self, fn: Callable[[Client], T]) -> T:
        """``fn(client)`` in the link's thread, retried (every :data:`RETRY_S` seconds) while
        the broker cannot be reached, rate-limits us (-32003) or failed a commit (-32603). Raises :class:`ParrotError`
        for any other refusal by the broker."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await loop.run_in_executor(self._pool, self._call, fn)
            except (OSError, BrokerUnavailable) as exc:
                log.warning("broker unavailable (%s); retrying", exc)
                await asyncio.sleep(RETRY_S)
            except ParrotError as exc:
                if exc.code not in (ErrorCode.RATE_LIMITED, ErrorCode.INTERNAL_ERROR):
                    raise
                await asyncio.sleep(float(exc.data.get("retry_after_s", RETRY_S)))

    def close(self) -> None:
        """Close the connection and stop the thread."""
        if self._client is not None:
            self._client.close()
        self._pool.shutdown(wait=False)


def subject_of(address: str) -> str:
    """``"bob@h2"`` -> ``"parrot.h2.bob"`` (a name may hold dots: more tokens, same prefix)."""
    name, node = split_address(address)
    return f"parrot.{node}.{name}"


def payload_of(msg: p.Message, node: str) -> bytes:
    """The JetStream payload of outbox message ``msg`` sent from ``node``."""
    name, _ = split_address(msg.to)
    data = msg.data if isinstance(msg.data, dict) else None
    bounce = msg.from_ == POSTMASTER and data is not None and "bounce" in data
    return msgspec.json.encode(RemoteMessage(id=msg.id, node=node, from_=msg.from_, to=name,
                                             content=msg.content, data=data, sent_at=msg.sent_at,
                                             bounce=bounce))


def credential_options(creds: bytes) -> dict[str, Any]:
    """nats-py connect options for the bytes of a credentials file: a ``.creds`` file (a user
    JWT and its nkey seed, as ``nsc`` writes it) or a bare nkey seed (``SU...``, for a server
    that lists users by nkey). Source: NATS docs, "Authentication: NKeys" and "JWTs"."""
    text = creds.decode("ascii", "replace")
    if "BEGIN NATS USER JWT" in text:
        from nats.aio.client import RawCredentials
        return {"user_credentials": RawCredentials(text)}
    return {"nkeys_seed_str": text.strip()}


def _acker(ids: list[str]) -> Callable[[Client], int]:
    """A broker call that acks outbox messages ``ids``."""
    return lambda c: c.relay_ack(ids)


class Relay:
    """The running relay: :meth:`run` until cancelled. ``stats`` counts published, delivered,
    duplicate, bounced and refused messages."""

    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.stats = {"published": 0, "delivered": 0, "duplicate": 0, "bounced": 0, "refused": 0}
        self._out = BrokerLink(settings.socket)
        self._in = [BrokerLink(settings.socket) for _ in range(INBOUND_LANES)]

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Connect to NATS, make sure the stream and the durable consumer exist, and move
        messages both ways until cancelled. ``ready`` is called once both loops run."""
        import nats  # the optional 'relay' extra

        s = self.settings
        opts: dict[str, Any] = {"servers": s.servers, "max_reconnect_attempts": -1,
                                "reconnect_time_wait": RETRY_S, "name": f"parrot-relay-{s.node}"}
        if s.credentials is not None:
            opts.update(credential_options(s.credentials))
        if s.tls is not None:
            opts["tls"] = s.tls
        nc = await nats.connect(**opts)
        try:
            js = nc.jetstream()
            await self._ensure_stream(js)
            sub = await self._subscribe(js)
            if ready is not None:
                ready()
            await asyncio.gather(self._outbound(js), self._inbound(sub))
        finally:
            self._out.close()
            for link in self._in:
                link.close()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _ensure_stream(self, js: Any) -> None:
        from nats.js.errors import NotFoundError
        try:
            await js.stream_info(self.settings.stream)
        except NotFoundError:
            if not self.settings.create_stream:
                raise
            await js.add_stream(name=self.settings.stream, subjects=["parrot.>"])

    async def _subscribe(self, js: Any) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig
        node = self.settings.node
        cfg = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.settings.ack_wait_s,
                             max_ack_pending=10 * self.settings.batch)
        return await js.pull_subscribe(f"parrot.{node}.>", durable=f"parrot-{node}",
                                       stream=self.settings.stream, config=cfg)

    # ------------------------------------------------------------------ outbound
    async def _outbound(self, js: Any) -> None:
        idle = IDLE_POLL_S
        batch = self.settings.batch
        while True:
            msgs = await self._out.call(lambda c: c.relay_take(max=batch))
            if not msgs:
                await asyncio.sleep(idle)
                idle = min(idle * 2, MAX_IDLE_POLL_S)
                continue
            idle = IDLE_POLL_S
            results = await asyncio.gather(*(self._publish(js, m) for m in msgs), return_exceptions=True)
            done = [m.id for m, r in zip(msgs, results, strict=True) if r is True]
            if done:
                await self._out.call(_acker(done))
                self.stats["published"] += len(done)
            if len(done) < len(msgs):
                log.warning("NATS publish failed for %d message(s); they are retried after the lease",
                            len(msgs) - len(done))
                await asyncio.sleep(RETRY_S)

    async def _publish(self, js: Any, msg: p.Message) -> bool:
        node = self.settings.node
        await js.publish(subject_of(msg.to), payload_of(msg, node), timeout=5.0,
                         stream=self.settings.stream, headers={"Nats-Msg-Id": f"{node}-{msg.id}"})
        return True

    # ------------------------------------------------------------------ inbound
    async def _inbound(self, sub: Any) -> None:
        import nats.errors
        while True:
            try:
                batch = await sub.fetch(self.settings.batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as exc:
                log.warning("JetStream fetch failed (%s); retrying", exc)
                await asyncio.sleep(RETRY_S)
                continue
            lanes: dict[int, list[Any]] = {}
            for jm in batch:  # one lane per recipient subject: its order is kept
                lanes.setdefault(zlib.crc32(jm.subject.encode()) % INBOUND_LANES, []).append(jm)
            await asyncio.gather(*(self._deliver_lane(self._in[k], jms) for k, jms in lanes.items()))

    async def _deliver_lane(self, link: BrokerLink, jms: list[Any]) -> None:
        for jm in jms:
            await self._deliver_one(link, jm)

    async def _deliver_one(self, link: BrokerLink, jm: Any) -> None:
        prefix = f"parrot.{self.settings.node}."
        try:
            rm = _decode_remote(jm.data)
        except msgspec.DecodeError as exc:
            log.warning("dropping a malformed message on %s: %s", jm.subject, exc)
            await jm.term()
            return
        if not jm.subject.startswith(prefix) or jm.subject[len(prefix):] != rm.to:
            log.warning("dropping a message whose subject %s does not match its recipient", jm.subject)
            await jm.term()
            return
        try:
            res = await link.call(lambda c: c.relay_deliver(
                rm.id, rm.node, rm.from_, rm.to, rm.content, data=rm.data, sent_at=rm.sent_at,
                bounce=rm.bounce))
        except ParrotError as exc:  # bad params (a name that is not one): never deliverable
            log.warning("the broker refused a message on %s: %s", jm.subject, exc)
            await jm.term()
            return
        self.stats[res.status] += 1
        await jm.ack()


def run_relay(settings: RelaySettings) -> None:
    """Run a :class:`Relay` with ``settings`` until SIGTERM or SIGINT (a clean stop). Blocks.

    Raises:
        OSError: NATS cannot be reached at start (nats-py's connection errors are OSErrors
            or ``nats.errors.NoServersError``, reported as one).
    """
    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await Relay(settings).run(ready=lambda: log.info(
                "relay for node %s running (%s)", settings.node, ", ".join(settings.servers)))

    import nats.errors
    try:
        asyncio.run(main())
    except nats.errors.NoServersError as exc:
        raise OSError(str(exc)) from None


@dataclass(frozen=True)
class Probe:
    """What ``parrot-ipc doctor`` learns about the relay's side of NATS: ``reachable`` (the
    connect worked; else ``error``), ``stream`` (the stream exists), ``consumer`` (the node's
    durable consumer exists), ``lag`` (its messages not yet delivered plus not yet acked)."""

    reachable: bool
    stream: bool = False
    consumer: bool = False
    lag: int = 0
    error: str = ""


async def _probe(settings: RelaySettings, timeout_s: float) -> Probe:
    import nats
    from nats.js.errors import NotFoundError

    async def quiet(exc: Exception) -> None:  # nats-py logs a traceback per error by default
        return None

    opts: dict[str, Any] = {"servers": settings.servers, "connect_timeout": timeout_s,
                            "max_reconnect_attempts": 0, "allow_reconnect": False, "error_cb": quiet}
    if settings.credentials is not None:
        opts.update(credential_options(settings.credentials))
    if settings.tls is not None:
        opts["tls"] = settings.tls
    try:
        nc = await asyncio.wait_for(nats.connect(**opts), 2 * timeout_s)
    except Exception as exc:  # nats-py raises several unrelated types for "cannot connect"
        return Probe(False, error=f"{type(exc).__name__}: {exc}")
    try:
        js = nc.jetstream(timeout=timeout_s)
        try:
            await js.stream_info(settings.stream)
        except NotFoundError:
            return Probe(True)
        try:
            info = await js.consumer_info(settings.stream, f"parrot-{settings.node}")
        except NotFoundError:
            return Probe(True, stream=True)
        return Probe(True, True, True, int(info.num_pending or 0) + int(info.num_ack_pending or 0))
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def probe(settings: RelaySettings, timeout_s: float = 2.0) -> Probe:
    """Connect to NATS as the relay would and look at its stream and consumer (read only).
    Never raises for NATS trouble: the :class:`Probe` says what failed."""
    async def bounded() -> Probe:
        try:
            return await asyncio.wait_for(_probe(settings, timeout_s), 5 * timeout_s)
        except TimeoutError:
            return Probe(False, error=f"no answer within {5 * timeout_s:g} s")
    return asyncio.run(bounded())
