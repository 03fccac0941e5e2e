"""The client layer: what an agent process uses to talk to the broker.

- :mod:`.spec`: one :class:`~.spec.Method` per JSON-RPC method of protocol v1; it builds the
  methods of both clients.
- :mod:`.wire`: the sans-I/O client side of the wire (request ids, frames, error mapping).
- :mod:`.blocking`: :class:`~.blocking.Client`, on standard-library sockets.
- :mod:`.trio_client`: :class:`~.trio_client.AsyncClient`, on trio, pipelined.
- :mod:`.mcp_bridge` and :mod:`.mcp_tools`: ``parrot-ipc mcp``, the broker as MCP tools.

Import the clients from :mod:`parrot_ipc` (``from parrot_ipc import Client``).
"""
