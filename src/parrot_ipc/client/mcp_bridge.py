"""``parrot-ipc mcp``: an MCP server over stdio that gives an AI agent the broker as tools.

Built on the official ``mcp`` Python SDK (the optional extra ``mcp``; its low-level
:class:`mcp.server.lowlevel.Server`; stdio by :mod:`parrot_ipc.client.mcp_channel`), run on trio
through anyio's trio backend, and on :class:`parrot_ipc.client.trio_client.AsyncClient`, so no
handler ever blocks the event loop.

- **Claim.** On start the bridge only connects and reads its instructions (``get_resource``
  needs no session), so a health check (initialize, tools/list, exit) never touches a live
  bridge's session. It calls ``get_token`` at the first tool call, with ``if_taken =
  "suffix"``: a second live bridge of the same user becomes ``NAME-2`` and says so. A bridge
  whose session was taken over says so in plain words and claims its name again only once the
  other holder has disconnected (``docs/protocol.md``, "Sessions of one owner").
- **Token.** The broker's policy decides whether the token is bound to this process. The token lives in this process's
  memory only: it is never written to a file, printed or logged.
- **Reconnection.** If the broker goes away (a restart), the next tool call connects again and
  ``authenticate``\\ s with the held token; if the broker no longer knows it (a memory store, or an
  expired session), the bridge calls ``get_token`` again. A revoked session stays revoked.
- **Instructions.** Before claiming, the bridge fetches the resource ``instructions``
  (``get_resource``, scope ``resources``) and returns its text as the MCP server's
  ``instructions`` in ``initialize``. If the broker cannot be reached or refuses (no
  ``resources`` scope, a file it may not serve, a bad digest), it starts degraded with
  :data:`GENERIC_INSTRUCTIONS` and a warning on stderr (a broker with no ``instructions`` at all: the
  same text, no warning): it fails closed, and no protected text
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
from typing import Any, Final

import mcp_types as types
import msgspec
import trio
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from ..core import protocol as p
from ..errors import BrokerUnavailable, ParrotError, ToolError
from ..os.paths import default_socket_path
from .mcp_channel import CHANNEL_CAPABILITY, channel_stdio, start_hook_service, with_channel_instructions
from .mcp_link import BrokerLink
from .mcp_tools import TOOL_NAMES, TOOLS, check_args, check_content, format_messages, name_text
from .trio_client import AsyncClient
from .wire import unreachable_hint

__all__ = [
    "GENERIC_INSTRUCTIONS",
    "Bridge",
    "BrokerLink",
    "InstructionCache",
    "build_server",
    "fetch_instructions",
    "run_bridge",
    "serve_bridge",
]
log = logging.getLogger("parrot_ipc.mcp")

#: What a degraded bridge (no broker, or no ``resources`` scope) tells the model. Not secret.
GENERIC_INSTRUCTIONS: Final = (
    "parrot-ipc: tools to exchange messages with other AI agents on this machine through a local "
    "broker. Use check_messages to read your mail, send to message one instance, broadcast to "
    "message all, list_instances to see who is there, and whoami to see your own name."
)
INSTRUCTIONS_RESOURCE: Final = "instructions"
#: Seconds to wait for the broker during start-up (connect, authenticate, fetch instructions).
STARTUP_TIMEOUT_S: Final = 10.0

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
    or the digest is wrong. Fails closed. A broker that has no such resource (``resource_not_found``:
    none is configured) gets the generic text without a warning; one it cannot serve
    (``resource_refused``: unsafe or unreadable) warns."""
    try:
        with trio.fail_after(timeout_s):
            res = await link.call(lambda c: c.get_resource(INSTRUCTIONS_RESOURCE), claim=False)
        return cache.accept(res), True
    except BrokerUnavailable as exc:
        why = f"{exc.message}. {unreachable_hint(exc, link.socket_path)}"
    except ParrotError as exc:
        if exc.reason == "resource_not_found":  # none configured: the generic text, without a word
            log.info("parrot-ipc mcp: the broker has no 'instructions' resource; using generic instructions")
            return GENERIC_INSTRUCTIONS, False
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
            return _error(f"Cannot reach the parrot-ipc broker: {exc.message}. "
                          f"{unreachable_hint(exc, self.link.socket_path)}")
        except ParrotError as exc:
            return _error(f"The broker refused {name}: {exc.message} (code {exc.code}, reason {exc.reason}).")
        except trio.TooSlowError:
            return _error(f"The broker did not answer {name} in time; try again.")
        notice, self.link.notice = self.link.notice, None
        if notice:
            text = f"{notice}\n{text}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                    structured_content=structured)

    async def _t_send(self, arguments: dict[str, Any] | None) -> tuple[str, Any]:
        a = check_args("send", arguments, {"to": (str, True), "content": (str, True), "reply_to": (str, False)})
        check_content("send", a["content"])
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
        check_content("broadcast", a["content"])
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
        self.link.instance = self.link.requested = res.instance_id  # the agent's own choice now
        return (f"Renamed {res.previous_id} -> {res.instance_id}; mail to {res.previous_id} is forwarded "
                f"for a while.", msgspec.to_builtins(res))

    async def _t_whoami(self, arguments: dict[str, Any] | None) -> tuple[str, Any]:
        check_args("whoami", arguments, {})
        me = await self.link.call(lambda c: c.whoami())
        conf = self.link.requested
        note = "" if me.instance_id == conf else f" (configured as {conf}, which another live agent of your user uses)"
        return (f"You are {me.instance_id}{note} (the broker sees uid {me.uid}, gid {me.gid}, pid {me.pid}); "
                f"scopes: {', '.join(me.scopes)}; session expires {me.expires_at}.",
                {**msgspec.to_builtins(me), "configured_instance_id": conf})


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def build_server(bridge: Bridge, instructions: str) -> Server[Any]:
    """The MCP server: ``tools/list`` answers :data:`TOOLS`; ``tools/call`` runs the bridge.

    A ``tools/call`` of a name not in :data:`TOOL_NAMES` raises :class:`MCPError` -32602
    ``Unknown tool: NAME``: a JSON-RPC error, not an ``isError`` result (MCP specification
    2025-06-18, Tools, "Error Handling", whose example is exactly that).
    """

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name not in TOOL_NAMES:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
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
        instructions = f"{instructions}\n\n{name_text(instance)}"
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
