"""parrot-ipc: a local message broker for AI agent processes, gated by SO_PEERCRED.

Public API: :class:`Client` (blocking), :class:`AsyncClient` (trio), :class:`ParrotError` and
:class:`BrokerUnavailable`. The broker itself is :func:`parrot_ipc.server.run_broker`.
"""

from .client import AsyncClient, BrokerUnavailable, Client, ParrotError

__version__ = "0.1.0"
__all__ = ["AsyncClient", "BrokerUnavailable", "Client", "ParrotError", "__version__"]
