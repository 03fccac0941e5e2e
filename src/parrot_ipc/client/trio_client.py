"""The trio client, :class:`AsyncClient`: the same calls as :class:`parrot_ipc.Client`, pipelined.

Kept apart from :mod:`parrot_ipc.client` so that blocking users (the CLI) never import trio.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import trio

from ..core import protocol as p
from ..errors import BrokerUnavailable, ParrotError
from ..os.paths import default_socket_path
from .blocking import _RECV_BYTES, _params, _result, _unreachable, _Wire

__all__ = ["AsyncClient", "BrokerUnavailable", "ParrotError"]


class _Waiter:
    """One call's response slot: the read loop sets it, the caller sleeps until then.

    Cheaper than a memory channel per call: a parked task and a direct reschedule.
    """

    __slots__ = ("done", "task", "value")

    def __init__(self) -> None:
        self.done = False
        self.task: trio.lowlevel.Task | None = None
        self.value: p.Incoming | None = None

    def set(self, value: p.Incoming | None) -> None:
        if self.done:
            return
        self.done, self.value = True, value
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> p.Incoming | None:
        if not self.done:
            self.task = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return self.value


class AsyncClient:
    """A trio client on one connection; many tasks may call it at once (requests pipeline).

    Use ``async with AsyncClient(path) as client:``. A background task reads responses and
    routes each to its caller; ``message`` notifications go to :meth:`messages`.

    Raises:
        BrokerUnavailable: on enter, if the broker cannot be reached; from a call if the
            connection breaks.
    """

    def __init__(self, socket_path: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.timeout_s = timeout_s
        self._wire = _Wire()
        self._waiting: dict[int, _Waiter] = {}
        self._note_send, self._note_recv = trio.open_memory_channel[p.Message](math.inf)
        self._stream: trio.SocketStream | None = None
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        self._broken: BrokerUnavailable | None = None
        self._out = bytearray()  # request frames not yet written (pipelined calls coalesce here)
        self._writing = False  # a task is in _write_out: frames appended meanwhile go out with it

    async def __aenter__(self) -> AsyncClient:
        try:
            self._stream = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise _unreachable(self.socket_path, exc) from None
        self._nursery_cm = trio.open_nursery()
        self._nursery = nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._read_loop)
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        assert self._stream is not None
        # Shielded: if we are being cancelled, aclose() would raise Cancelled at its checkpoint and
        # the nursery below would never be exited, corrupting trio's task tree.
        with trio.CancelScope(shield=True):
            await self._stream.aclose()
        return bool(await self._nursery_cm.__aexit__(et, ev, tb))

    async def _read_loop(self) -> None:
        assert self._stream is not None
        cause = "the broker closed the connection"
        try:
            while True:
                data = await self._stream.receive_some(_RECV_BYTES)
                if not data:
                    break
                for inc in self._wire.feed(data):
                    self._route(inc)
                while self._wire.notifications:
                    self._note_send.send_nowait(self._wire.notifications.popleft())
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = str(exc) or cause
        if self._broken is None:  # else the writer closed the stream and said why
            self._broken = BrokerUnavailable(self.socket_path, cause)
        for waiter in list(self._waiting.values()):
            waiter.set(None)
        self._note_send.close()

    def _route(self, inc: p.Incoming) -> None:
        if inc.id is None:  # an error the broker could not tie to a request: fail every caller
            for each in list(self._waiting.values()):
                each.set(inc)
            return
        waiter = self._waiting.get(inc.id) if isinstance(inc.id, int) else None
        if waiter is not None:
            waiter.set(inc)

    async def _write_out(self) -> None:
        """Write ``_out`` until it is empty: one ``send_all`` per batch of queued frames.

        Each write is shielded from the caller's cancellation: a ``send_all`` cut short leaves
        part of a frame on the wire (trio's Stream contract) and the frames of other callers in
        the batch lost. Instead a write has its own deadline, ``timeout_s``: a broker that reads
        nothing for that long gets the connection closed, and every caller BrokerUnavailable.
        """
        stream = self._stream
        assert stream is not None
        self._writing = True
        try:
            while self._out:
                data = bytes(self._out)
                self._out.clear()
                with trio.CancelScope(shield=True, deadline=trio.current_time() + self.timeout_s) as scope:
                    await stream.send_all(data)
                if scope.cancelled_caught:
                    self._broken = BrokerUnavailable(
                        self.socket_path, f"the broker read none of our requests for {self.timeout_s:g} s")
                    with trio.CancelScope(shield=True):
                        await stream.aclose()  # the read loop sees it and fails every waiter
                    raise self._broken
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BrokerUnavailable(self.socket_path, str(exc) or "connection lost") from None
        finally:
            self._writing = False
            if self._out and self._broken is None and self._nursery is not None:
                # We were cancelled with other callers' frames still queued: hand them on.
                self._nursery.start_soon(self._write_rest)

    async def _write_rest(self) -> None:
        if not self._writing:
            with contextlib.suppress(BrokerUnavailable):
                await self._write_out()

    async def call(self, method: str, params: dict[str, Any] | None = None, result_type: Any = Any,
                   *, timeout_s: float | None = None) -> Any:
        """Send one request and await its result decoded as ``result_type``.

        Raises :class:`ParrotError`, :class:`BrokerUnavailable`, or :class:`trio.TooSlowError`
        after ``timeout_s``.
        """
        if self._broken is not None:
            raise self._broken
        assert self._stream is not None
        rid = self._wire.request_into(method, params, self._out)
        waiter = self._waiting[rid] = _Waiter()
        try:
            if not self._writing:
                await self._write_out()
            # A bare CancelScope, not trio.fail_after: no generator context manager per call.
            with trio.CancelScope(deadline=trio.current_time() + (timeout_s or self.timeout_s)) as scope:
                inc = await waiter.wait()
            if scope.cancelled_caught:
                raise trio.TooSlowError
        finally:
            del self._waiting[rid]
        if inc is None:
            raise self._broken or BrokerUnavailable(self.socket_path, "connection lost")
        return _result(inc, result_type)

    async def messages(self) -> AsyncIterator[p.Message]:
        """Pushed messages after :meth:`subscribe`, until the connection closes."""
        async for msg in self._note_recv:
            yield msg

    # -- typed methods (docs/protocol.md, Methods) --------------------------------------
    async def ping(self) -> str:
        return str(await self.call("ping", None, str))

    async def get_token(self, instance_id: str, *, shared_secret_proof: str | None = None) -> p.TokenResult:
        params = _params(instance_id=instance_id, shared_secret_proof=shared_secret_proof)
        return await self.call("get_token", params, p.TokenResult)  # type: ignore[no-any-return]

    async def authenticate(self, token: str) -> p.AuthResult:
        return await self.call("authenticate", {"token": token}, p.AuthResult)  # type: ignore[no-any-return]

    async def whoami(self) -> p.WhoamiResult:
        return await self.call("whoami", None, p.WhoamiResult)  # type: ignore[no-any-return]

    async def send(self, to: str, content: str, *, data: dict[str, Any] | None = None,
                   idempotency_key: str | None = None) -> p.SendResult:
        params = _params(to=to, content=content, data=data, idempotency_key=idempotency_key)
        return await self.call("send", params, p.SendResult)  # type: ignore[no-any-return]

    async def broadcast(self, content: str, *, data: dict[str, Any] | None = None) -> p.BroadcastResult:
        return await self.call("broadcast", _params(content=content, data=data), p.BroadcastResult)  # type: ignore[no-any-return]

    async def receive(self, *, max: int = 100, wait_s: float = 0.0) -> list[p.Message]:
        res = await self.call("receive", {"max": max, "wait_s": wait_s}, p.ReceiveResult,
                              timeout_s=self.timeout_s + wait_s)
        return list(res.messages)

    async def ack(self, ids: list[str]) -> int:
        return int((await self.call("ack", {"ids": ids}, p.AckResult)).acked)

    async def list_instances(self) -> list[p.InstanceInfo]:
        return list((await self.call("list_instances", None, p.ListInstancesResult)).instances)

    async def rename(self, new_id: str) -> p.RenameResult:
        return await self.call("rename", {"new_id": new_id}, p.RenameResult)  # type: ignore[no-any-return]

    async def subscribe(self) -> bool:
        return bool((await self.call("subscribe", None, p.SubscribeResult)).subscribed)

    async def revoke(self) -> bool:
        return bool((await self.call("revoke", None, p.RevokeResult)).revoked)

    async def get_resource(self, name: str) -> p.ResourceResult:
        """A protected resource: ``{name, content, sha256}`` (scope ``resources``; -32005 if unknown)."""
        return await self.call("get_resource", {"name": name}, p.ResourceResult)  # type: ignore[no-any-return]
