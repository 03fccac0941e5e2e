"""parrot-ipc: a local message broker for AI agent processes, gated by SO_PEERCRED.

Public API: :class:`Client` (blocking), :class:`AsyncClient` (trio), :class:`ParrotError` and
:class:`BrokerUnavailable`. The broker itself is :func:`parrot_ipc.app.daemon.run_broker`.

The names are loaded on first use (PEP 562), so ``import parrot_ipc.core`` stays free of
``socket`` and ``trio``, and blocking users never import trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client.blocking import Client
    from .client.trio_client import AsyncClient
    from .errors import BrokerUnavailable, ParrotError

__version__ = "0.1.0"
__all__ = ["AsyncClient", "BrokerUnavailable", "Client", "ParrotError", "__version__"]

_LAZY = {"AsyncClient": "client.trio_client", "BrokerUnavailable": "errors", "Client": "client.blocking",
         "ParrotError": "errors"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'parrot_ipc' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
