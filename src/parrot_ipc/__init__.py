"""parrot-ipc: a local message broker for AI agent processes, gated by SO_PEERCRED.

Public API: :class:`Client` (blocking), :class:`AsyncClient` (trio), :class:`ParrotError` and
:class:`BrokerUnavailable`. The broker itself is :func:`parrot_ipc.server.run_broker`.
"""

from typing import TYPE_CHECKING, Any

from .client import BrokerUnavailable, Client, ParrotError

if TYPE_CHECKING:
    from .async_client import AsyncClient

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # AsyncClient pulls in trio (~0.1 s); load it only when asked for (PEP 562).
    if name == "AsyncClient":
        from .async_client import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'parrot_ipc' has no attribute {name!r}")
__all__ = ["AsyncClient", "BrokerUnavailable", "Client", "ParrotError", "__version__"]
