"""The MCP bridge's link to the broker: one connection at a time, the session token (memory
only), the claim on the instance, and reconnection.

The rules it follows are ``docs/protocol.md``, "Sessions of one owner" (issue 13): no session
until the first tool call; then ``get_token`` with ``if_taken = "suffix"`` (a second live
bridge of the same user becomes ``NAME-2``); after a takeover, claim again with ``if_taken =
"fail"`` only once the other holder has disconnected; after a revoke, never by itself.
:mod:`parrot_ipc.client.mcp_bridge` runs the tools over it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import trio

from ..errors import BrokerUnavailable, ParrotError, ToolError
from .mcp_tools import ended_text, suffixed_text, taken_over_text
from .trio_client import AsyncClient

log = logging.getLogger("parrot_ipc.mcp")
T = TypeVar("T")

#: Seconds the link waits for any one broker call.
CALL_TIMEOUT_S: Final = 30.0


class BrokerLink:
    """The bridge's connection to the broker, its token (memory only), its claim on its
    instance, and reconnection.

    Args:
        socket_path: the broker's socket.
        instance: the instance id the bridge is configured with (``--instance``).

    The bridge claims its instance lazily (``docs/protocol.md``, "Sessions of one owner"): a
    connection is opened without a session (the instructions are read with ``get_resource``,
    which needs none), and ``get_token`` runs only at the first tool call, with ``if_taken =
    "suffix"``, so a second live bridge of the same user becomes ``NAME-2`` instead of taking
    the first one's session. :meth:`run` is the task that owns the :class:`AsyncClient` (a trio
    nursery must be closed by the task that opened it); :meth:`call` asks it for a connection
    when there is none.

    Attributes:
        requested: the configured instance id.
        instance: the instance id held (or to claim again).
        scopes: the session's scopes, once claimed.
        notice: one sentence for the agent about its name, shown with the next tool result.
    """

    def __init__(self, socket_path: str, instance: str) -> None:
        self.socket_path = socket_path
        self.requested = self.instance = instance
        self.scopes: list[str] = []
        self.notice: str | None = None
        self._token: str | None = None  # never leaves this object
        self._claimed = False  # the current connection is bound to our session
        self._taken_over = False  # another process of our user took our session over
        self._ended: str | None = None  # why our session was ended for good (revoked)
        self._client: AsyncClient | None = None
        self._wanted_send, self._wanted_recv = trio.open_memory_channel[
            trio.MemorySendChannel[AsyncClient | ParrotError]](0)
        self._connect_lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open a connection each time one is wanted, and hold it until it closes.

        Run it in a nursery with ``await nursery.start(link.run)``. A refusal or an unreachable
        broker is handed to the caller of :meth:`connect`; any other exception (a bug) ends it.
        """
        task_status.started()
        async for reply in self._wanted_recv:
            answered = False
            try:
                async with AsyncClient(self.socket_path, timeout_s=CALL_TIMEOUT_S) as client:
                    await self._resume(client)
                    self._client = client
                    reply.send_nowait(client)
                    answered = True
                    # We never subscribe, so no message arrives: this returns when the
                    # connection closes (the broker stopped, or dropped us).
                    async for _ in client.messages():
                        pass
                    self._client = None
                    log.warning("the broker closed the connection; the next tool call reconnects")
            except Exception as exc:  # sorted out below; anything else (a bug) is re-raised
                err = _leaf(exc)
                if isinstance(err, (trio.TooSlowError, OSError)):
                    err = BrokerUnavailable(self.socket_path, str(err) or type(err).__name__)
                if not isinstance(err, ParrotError):
                    raise
                if not answered:
                    reply.send_nowait(err)
            finally:
                self._client = None

    async def _resume(self, client: AsyncClient) -> None:
        """On a new connection: bind it to our session with the held token, if any. A token the
        broker no longer takes is dropped: the next tool call claims the name again."""
        self._claimed = False
        if self._token is None:
            return
        try:
            res = await client.authenticate(self._token)
        except ParrotError as exc:
            if isinstance(exc, BrokerUnavailable) or not exc.unauthenticated:
                raise
            log.warning("the broker no longer accepts this bridge's session (%s); registering %s again",
                        exc.reason, self.instance)
            self._token = None
            return
        self.instance, self.scopes, self._claimed = res.instance_id, list(res.scopes), True

    async def _claim(self, client: AsyncClient) -> None:
        """Take a session: the first time ``requested`` with ``if_taken = "suffix"``; after a
        loss, ``instance`` again with ``if_taken = "fail"`` (never someone's live session).

        Raises:
            ToolError: the session was revoked for good, or taken over and the other holder
                is still connected (in plain words for the agent).
            ParrotError: any other refusal.
        """
        if self._ended is not None:
            raise ToolError(ended_text(self.instance, self._ended))
        first = self._token is None and not self._taken_over and self.instance == self.requested
        try:
            tok = await client.get_token(self.instance, if_taken="suffix" if first else "fail")
        except ParrotError as exc:
            if exc.reason != "instance_taken":
                raise
            self._taken_over = True
            raise ToolError(taken_over_text(self.instance)) from None
        if self._taken_over:
            self.notice = (f"Note: your session as {tok.instance_id} had been taken over by another process of "
                           f"your user; that process has disconnected, and you hold {tok.instance_id} again.")
        elif tok.instance_id != self.requested:
            self.notice = suffixed_text(self.requested, tok.instance_id)
        self._token, self._claimed, self._taken_over = tok.token, True, False
        self.instance, self.scopes = tok.instance_id, list(tok.scopes)

    def token(self) -> str | None:
        """The session's token (None before the claim), for this bridge's own second connection
        (the channel pusher, client/mcp_channel.py, issue 15); never logged or written."""
        return self._token

    async def connect(self) -> AsyncClient:
        """The live connection, opening (and authenticating) one if needed.

        Raises :class:`BrokerUnavailable`, or :class:`ParrotError` if the broker refuses us.
        """
        async with self._connect_lock:
            if self._client is not None:
                return self._client
            reply_send, reply_recv = trio.open_memory_channel[AsyncClient | ParrotError](1)
            await self._wanted_send.send(reply_send)
            got = await reply_recv.receive()
            if isinstance(got, ParrotError):
                raise got
            return got

    async def call(self, op: Callable[[AsyncClient], Awaitable[T]], *, claim: bool = True) -> T:
        """Run ``op`` on the connection, first claiming the instance if ``claim`` and not yet
        done; reconnect once if the broker went away, claim once more if the session was lost.

        Raises :class:`ParrotError` / :class:`BrokerUnavailable`, or :class:`ToolError` (plain
        words) when the session was taken over or revoked.
        """
        for attempt in (1, 2):
            client = await self.connect()
            if claim and not self._claimed:
                await self._claim(client)
            try:
                return await op(client)
            except BrokerUnavailable:
                self._client = None
                if attempt == 2:
                    raise
            except ParrotError as exc:
                if attempt == 2 or not exc.unauthenticated:
                    raise
                self._lost(exc)
        raise AssertionError("unreachable")

    def _lost(self, exc: ParrotError) -> None:
        """Our session is gone (``exc`` is the -32001 that said so): decide how to claim again.
        ``token_revoked`` with ``why = "replaced"`` is a takeover (claim again only when the
        other holder has disconnected); another ``why`` (revoked, released, no longer
        admitted) ends it for good; an expired or unknown token is claimed again."""
        self._claimed = False
        if exc.reason != "token_revoked":
            return
        why = str(exc.data.get("why", "revoked"))
        self._token = None
        if why == "replaced":
            self._taken_over = True
        else:
            self._ended = why


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, as trio nurseries
    wrap what their body raises; a group of several stays a group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
