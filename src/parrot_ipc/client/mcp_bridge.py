"""``parrot-ipc mcp``: an MCP server over stdio that gives an AI agent the broker as tools.

Built on the official ``mcp`` Python SDK (the optional extra ``mcp``; its low-level
:class:`mcp.server.lowlevel.Server`; stdio by :mod:`parrot_ipc.client.mcp_channel`), run on trio
through anyio's trio backend, and on :class:`parrot_ipc.client.trio_client.AsyncClient`, so no
handler ever blocks the event loop.

- **Token.** On start the bridge calls ``get_token`` for its instance (the broker's policy
  decides whether the token is bound to this process). The token lives in this process's
  memory only: it is never written to a file, printed or logged.
- **Reconnection.** If the broker goes away (a restart), the next tool call connects again and
  ``authenticate``\\ s with the held token; if the broker no longer knows it (a memory store, or an
  expired session), the bridge calls ``get_token`` again. A revoked session stays revoked.
- **Instructions.** After authenticating, the bridge fetches the resource ``instructions``
  (``get_resource``, scope ``resources``) and returns its text as the MCP server's
  ``instructions`` in ``initialize``. If the broker cannot be reached or refuses (no
  ``resources`` scope, no such resource, a bad digest), it starts degraded with
  :data:`GENERIC_INSTRUCTIONS` and a warning on stderr: it fails closed, and no protected text
  is ever compiled into or shipped with the bridge. Fetched texts are cached for the session,
  keyed by their SHA-256.
- **Errors.** A broker error becomes an MCP tool error (``isError``) carrying the broker's
  message, code and reason; an unreachable broker is a tool error that says how to start one.

Tools (each with a JSON schema, in :mod:`parrot_ipc.client.mcp_tools`): ``send``,
``check_messages``, ``broadcast``, ``list_instances``, ``rename``, ``whoami``. Source: the MCP
specification (Lifecycle for ``initialize``, Tools for ``tools/list`` and ``tools/call``).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import mcp_types as types
import msgspec
import trio
from mcp.server.lowlevel import Server

from ..core import protocol as p
from ..errors import BrokerUnavailable, ParrotError, ToolError
from ..os.paths import default_socket_path
from .mcp_channel import CHANNEL_CAPABILITY, channel_stdio, start_hook_service, with_channel_instructions
from .mcp_tools import TOOLS, check_args, format_messages
from .trio_client import AsyncClient
from .wire import start_hint

log = logging.getLogger("parrot_ipc.mcp")
T = TypeVar("T")

#: What a degraded bridge (no broker, or no ``resources`` scope) tells the model. Not secret.
GENERIC_INSTRUCTIONS: Final = (
    "parrot-ipc: tools to exchange messages with other AI agents on this machine through a local "
    "broker. Use check_messages to read your mail, send to message one instance, broadcast to "
    "message all, list_instances to see who is there, and whoami to see your own name."
)
INSTRUCTIONS_RESOURCE: Final = "instructions"
#: Seconds to wait for the broker during start-up (connect, authenticate, fetch instructions).
STARTUP_TIMEOUT_S: Final = 10.0
CALL_TIMEOUT_S: Final = 30.0

# =============================================================================== broker link
class BrokerLink:
    """The bridge's connection to the broker, its token (memory only), and reconnection.

    Args:
        socket_path: the broker's socket.
        instance: the instance id to register as.

    :meth:`run` is the task that owns the :class:`AsyncClient` (a trio nursery must be closed
    by the task that opened it); :meth:`call` asks it for a connection when there is none.
    """

    def __init__(self, socket_path: str, instance: str) -> None:
        self.socket_path = socket_path
        self.instance = instance
        self.scopes: list[str] = []
        self._token: str | None = None  # never leaves this object
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
                    await self._login(client)
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

    async def _login(self, client: AsyncClient) -> None:
        if self._token is not None:
            try:
                res = await client.authenticate(self._token)
            except ParrotError as exc:
                if isinstance(exc, BrokerUnavailable) or not exc.unauthenticated:
                    raise
                log.warning("the broker no longer accepts this bridge's session (%s); registering %s again",
                            exc.reason, self.instance)
            else:
                self.instance, self.scopes = res.instance_id, list(res.scopes)
                return
        tok = await client.get_token(self.instance)
        self._token = tok.token
        self.instance, self.scopes = tok.instance_id, list(tok.scopes)

    def token(self) -> str | None:
        """The session's token (None before the first login), for this bridge's own second
        connection (the channel pusher, client/mcp_channel.py); never logged or written."""
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

    async def call(self, op: Callable[[AsyncClient], Awaitable[T]]) -> T:
        """Run ``op`` on the connection; reconnect once if the broker went away, log in again
        once if the session expired. Raises :class:`ParrotError` / :class:`BrokerUnavailable`."""
        for attempt in (1, 2):
            client = await self.connect()
            try:
                return await op(client)
            except BrokerUnavailable:
                self._client = None
                if attempt == 2:
                    raise
            except ParrotError as exc:
                if attempt == 2 or not exc.unauthenticated or exc.reason != "token_expired":
                    raise
                await self._login(client)
        raise AssertionError("unreachable")


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, as trio nurseries
    wrap what their body raises; a group of several stays a group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# =============================================================================== instructions
class InstructionCache:
    """Instruction texts fetched in this session, keyed by their hex SHA-256."""

    def __init__(self) -> None:
        self.by_sha256: dict[str, str] = {}

    def accept(self, res: p.ResourceResult) -> str:
        """The text of ``res``, after checking its ``sha256`` (hex) against the SHA-256 of the
        content's UTF-8 bytes, cached by digest. Raises ValueError on a mismatch."""
        cached = self.by_sha256.get(res.sha256)
        if cached is not None:
            return cached
        if hashlib.sha256(res.content.encode()).hexdigest() != res.sha256:
            raise ValueError("the resource's sha256 does not match its content")
        self.by_sha256[res.sha256] = res.content
        return res.content


async def fetch_instructions(link: BrokerLink, cache: InstructionCache,
                             timeout_s: float = STARTUP_TIMEOUT_S) -> tuple[str, bool]:
    """``(instructions, protected)``: the broker's ``instructions`` resource, or the generic
    text (``protected`` False) with a warning on stderr if the broker is unreachable, refuses,
    or the digest is wrong. Fails closed."""
    try:
        with trio.fail_after(timeout_s):
            res = await link.call(lambda c: c.get_resource(INSTRUCTIONS_RESOURCE))
        return cache.accept(res), True
    except BrokerUnavailable as exc:
        why = f"{exc.message}. {start_hint(link.socket_path)}"
    except ParrotError as exc:
        why = f"the broker refused: {exc.message} (code {exc.code}, reason {exc.reason})"
    except trio.TooSlowError:
        why = f"the broker did not answer within {timeout_s:g} s"
    except ValueError as exc:
        why = str(exc)
    log.warning("parrot-ipc mcp: starting degraded with generic instructions: %s", why)
    return GENERIC_INSTRUCTIONS, False


# =============================================================================== tools
class Bridge:
    """The tool implementations over a :class:`BrokerLink`. Each returns a CallToolResult."""

    def __init__(self, link: BrokerLink) -> None:
        self.link = link

    async def call_tool(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        """Run tool ``name``; every failure is an ``isError`` result whose text says why."""
        impl = getattr(self, f"_t_{name}", None)
        try:
            if impl is None:
                raise ToolError(f"Unknown tool {name!r}.")
            text, structured = await impl(arguments)
        except ToolError as exc:
            return _error(str(exc))
        except BrokerUnavailable as exc:
            return _error(f"Cannot reach the parrot-ipc broker: {exc.message}. {start_hint(self.link.socket_path)}")
        except ParrotError as exc:
            return _error(f"The broker refused {name}: {exc.message} (code {exc.code}, reason {exc.reason}).")
        except trio.TooSlowError:
            return _error(f"The broker did not answer {name} in time; try again.")
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                    structured_content=structured)

    async def _t_send(self, arguments: dict[str, Any] | None) -> tuple[str, Any]:
        a = check_args("send", arguments, {"to": (str, True), "content": (str, True), "reply_to": (str, False)})
        res = await self.link.call(lambda c: c.send(a["to"], a["content"], reply_to=a.get("reply_to")))
        note = " (forwarded: that name was renamed)" if res.status == "forwarded" else ""
        return f"Sent message {res.id} to {res.to}{note}.", msgspec.to_builtins(res)

    async def _t_check_messages(self, arguments: dict[str, Any] | None) -> tuple[str, Any]:
        a = check_args("check_messages", arguments, {"max": (int, False), "wait_s": ((int, float), False)})
        max_count, wait_s = a.get("max", 20), float(a.get("wait_s", 0))
        if not 1 <= max_count <= 100 or not 0 <= wait_s <= 60:
            raise ToolError("Invalid arguments for check_messages: max is 1-100 and wait_s is 0-60.")

        async def op(c: AsyncClient) -> tuple[list[p.Message], int]:
            msgs = await c.receive(max=max_count, wait_s=wait_s)
            return msgs, (await c.ack([m.id for m in msgs]) if msgs else 0)

        msgs, acked = await self.link.call(op)
        return (format_messages(self.link.instance, msgs),
                {"messages": msgspec.to_builtins(msgs), "acked": acked})

    async def _t_broadcast(self, arguments: dict[str, Any] | None) -> tuple[str, Any]:
        a = check_args("broadcast", arguments, {"content": (str, True)})
        res = await self.link.call(lambda c: c.broadcast(a["content"]))
        who = ", ".join(res.recipients) if res.recipients else "nobody (no other agent holds a session)"
        return f"Broadcast {res.id} sent to {len(res.recipients)} agent(s): {who}.", msgspec.to_builtins(res)

    async def _t_list_instances(self, arguments: dict[str, Any] | None) -> tuple[str, Any]:
        check_args("list_instances", arguments, {})
        rows = await self.link.call(lambda c: c.list_instances())
        me = self.link.instance
        lines = [f"{len(rows)} instance(s):"] + [
            f"- {r.instance_id}{' (you)' if r.instance_id == me else ''}: {'online' if r.online else 'offline'}, "
            f"last seen {r.last_seen}, {r.queued} message(s) waiting"
            for r in rows
        ]
        return "\n".join(lines), {"instances": msgspec.to_builtins(rows)}

    async def _t_rename(self, arguments: dict[str, Any] | None) -> tuple[str, Any]:
        a = check_args("rename", arguments, {"new_id": (str, True)})
        res = await self.link.call(lambda c: c.rename(a["new_id"]))
        self.link.instance = res.instance_id
        return (f"Renamed {res.previous_id} -> {res.instance_id}; mail to {res.previous_id} is forwarded "
                f"for a while.", msgspec.to_builtins(res))

    async def _t_whoami(self, arguments: dict[str, Any] | None) -> tuple[str, Any]:
        check_args("whoami", arguments, {})
        me = await self.link.call(lambda c: c.whoami())
        return (f"You are {me.instance_id} (the broker sees uid {me.uid}, gid {me.gid}, pid {me.pid}); "
                f"scopes: {', '.join(me.scopes)}; session expires {me.expires_at}.", msgspec.to_builtins(me))


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def build_server(bridge: Bridge, instructions: str) -> Server[Any]:
    """The MCP server: ``tools/list`` answers :data:`TOOLS`; ``tools/call`` runs the bridge."""

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await bridge.call_tool(params.name, params.arguments)

    from .. import __version__

    return Server("parrot-ipc", version=__version__, instructions=instructions,
                  on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_bridge(instance: str, socket_path: str) -> None:
    """Log in, fetch the instructions, then serve MCP on stdin/stdout until stdin closes."""
    link = BrokerLink(socket_path, instance)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        instructions, protected = await fetch_instructions(link, InstructionCache())
        if protected:
            log.info("parrot-ipc mcp: serving %s with the broker's instructions", link.instance)
        server = build_server(Bridge(link), with_channel_instructions(instructions))
        await start_hook_service(nursery, link)  # issue 15: hooks and channels, client/mcp_channel.py
        async with channel_stdio(link) as (read_stream, write_stream):
            await server.run(read_stream, write_stream,
                             server.create_initialization_options(experimental_capabilities=CHANNEL_CAPABILITY))
        nursery.cancel_scope.cancel()


def run_bridge(instance: str, socket_path: str | None = None, *, log_level: str = "WARNING") -> None:
    """Entry point of ``parrot-ipc mcp``: run the bridge on trio until stdin closes. Blocks.

    Logs (warnings by default) go to stderr; stdout is the MCP channel.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("parrot_ipc")
    root.addHandler(handler)
    root.setLevel(log_level.upper())
    root.propagate = False
    trio.run(serve_bridge, instance, socket_path or default_socket_path())
