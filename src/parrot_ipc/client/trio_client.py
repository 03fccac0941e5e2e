"""The trio client, :class:`AsyncClient`: the same calls as :class:`parrot_ipc.Client`, pipelined.

Both clients get their methods from one table, :class:`parrot_ipc.client.spec.Methods`; here
each returns a coroutine. Kept apart from :mod:`parrot_ipc.client.blocking` so that blocking
users (the CLI) never import trio.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import trio

from ..core import protocol as p
from ..errors import BrokerUnavailable, ParrotError, UntrustedBroker
from ..os.paths import default_socket_path
from .spec import Call, TrioCalls, raw_call
from .trust import verify_broker

if TYPE_CHECKING:  # types only: the socket is trio's
    import socket
from .wire import RECV_BYTES, Wire, check_socket_dir, error_of, unreachable

__all__ = ["AsyncClient", "BrokerUnavailable", "ParrotError"]
R = TypeVar("R")


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
        """Fill the slot (the first value wins; None: the connection is gone); wake the caller."""
        if self.done:
            return
        self.done, self.value = True, value
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> p.Incoming | None:
        """The value :meth:`set` put in the slot, sleeping until then (a trio checkpoint)."""
        if not self.done:
            self.task = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return self.value


class AsyncClient(TrioCalls):
    """A trio client on one connection; many tasks may call it at once (requests pipeline).

    Args:
        socket_path: the broker's socket (default: :func:`parrot_ipc.os.paths.default_socket_path`).
        timeout_s: how long to wait for each response, in seconds (a long-poll ``receive``
            adds its ``wait_s``); also how long one write may wait for the broker to read.
        broker_user: the user trusted as the broker besides root and ourselves (default: see
            :mod:`parrot_ipc.client.trust`).

    Use ``async with AsyncClient(path) as client:``. A background task reads responses and
    routes each to its caller; ``message`` notifications go to :meth:`messages`. The protocol's
    methods (``await client.ping()``, ``send``, ... ``list_sessions``) come from
    :class:`parrot_ipc.client.spec.Methods`.

    Raises:
        BrokerUnavailable: on enter, if the broker cannot be reached; from a call if the
            connection breaks.
        UntrustedBroker: on enter, if the listener is not root, us or the broker user
            (SO_PEERCRED, checked before anything is sent).
    """

    def __init__(self, socket_path: str | None = None, *, timeout_s: float = 30.0,
                 broker_user: str | None = None) -> None:
        self.socket_path = socket_path or default_socket_path()
        self._broker_user = broker_user
        self.timeout_s = timeout_s
        self._wire = Wire()
        self._waiting: dict[int, _Waiter] = {}
        self._note_send, self._note_recv = trio.open_memory_channel[p.Message](math.inf)
        self._stream: trio.SocketStream | None = None
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        self._broken: BrokerUnavailable | None = None
        self._out = bytearray()  # request frames not yet written (pipelined calls coalesce here)
        self._writing = False  # a task is in _write_out: frames appended meanwhile go out with it

    async def __aenter__(self) -> AsyncClient:
        check_socket_dir(self.socket_path)
        try:
            self._stream = stream = await trio.open_unix_socket(self.socket_path)
        except OSError as exc:
            raise unreachable(self.socket_path, exc) from None
        try:  # a trio socket has the stdlib getsockopt(), the only method verify_broker calls
            verify_broker(cast("socket.socket", stream.socket), self.socket_path, self._broker_user)
        except (OSError, UntrustedBroker) as exc:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            if isinstance(exc, OSError):
                raise unreachable(self.socket_path, exc) from None
            raise
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
                data = await self._stream.receive_some(RECV_BYTES)
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

    async def _run(self, call: Call[R], timeout_s: float | None = None) -> R:
        if self._broken is not None:
            raise self._broken
        assert self._stream is not None
        rid = self._wire.request_into(call.method, call.params, self._out)
        waiter = self._waiting[rid] = _Waiter()
        try:
            if not self._writing:
                await self._write_out()
            # A bare CancelScope, not trio.fail_after: no generator context manager per call.
            wait_s = timeout_s or self.timeout_s + call.wait_s
            with trio.CancelScope(deadline=trio.current_time() + wait_s) as scope:
                inc = await waiter.wait()
            if scope.cancelled_caught:
                raise trio.TooSlowError
        finally:
            del self._waiting[rid]
        if inc is None:
            raise self._broken or BrokerUnavailable(self.socket_path, "connection lost")
        if inc.error is not None:
            raise error_of(inc.error)
        return call.decode(inc.result)

    async def call(self, method: str, params: dict[str, Any] | None = None, result_type: Any = Any,
                   *, timeout_s: float | None = None) -> Any:
        """Send one request for any method by name and await its result decoded as
        ``result_type`` (default: plain JSON values). Prefer the typed methods.

        Raises :class:`ParrotError`, :class:`BrokerUnavailable`, or :class:`trio.TooSlowError`
        after ``timeout_s`` seconds (default the client's ``timeout_s``).
        """
        return await self._run(raw_call(method, params, result_type), timeout_s)

    async def messages(self) -> AsyncIterator[p.Message]:
        """Pushed messages after :meth:`subscribe`, until the connection closes."""
        async for msg in self._note_recv:
            yield msg
