"""What ``parrot-ipc mcp`` adds so mail reaches the model by itself (issue 15): the service its
hooks talk to (:mod:`parrot_ipc.client.hook_link`) and Claude Code channel notifications.

Kept apart from :mod:`parrot_ipc.client.mcp_bridge`, which calls in here from a few lines.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

from .hook_link import HookService

log = logging.getLogger("parrot_ipc.mcp.channel")


async def start_hook_service(nursery: trio.Nursery, link: Any) -> None:
    """Serve this bridge's hooks (:class:`HookService` over ``link.call``) on the hook socket
    of the bridge's parent process, the agent. A bridge that cannot bind it logs a warning and
    runs without hooks; it never fails for that."""
    service = HookService(link.call, lambda: str(link.instance))
    try:
        path = await nursery.start(service.serve, os.getppid())
    except Exception as exc:  # hooks are optional: the tools still work
        log.warning("parrot-ipc mcp: no hook socket (%s); hooks will show nothing", exc)
        return
    log.info("parrot-ipc mcp: serving hooks on %s", path)
