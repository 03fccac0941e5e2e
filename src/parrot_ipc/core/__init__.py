"""The sans-I/O core: framing, protocol schema, policy and broker state.

Imports neither ``trio`` nor ``socket``, and makes no OS calls (``tests/core/test_sans_io.py``).
Time and randomness are injected. One module per job:

- ``framing``: NDJSON frames from a byte stream (:class:`FrameBuffer`);
- ``protocol``: the JSON-RPC 2.0 envelope and codecs; ``schema``: each method's params and
  results (``protocol`` re-exports them);
- ``config``: :class:`BrokerConfig`; ``policy``: peer credentials and admission;
- ``broker``: the :class:`Broker` facade the shell drives;
- ``methods``: the one method table (name -> params, result, needed scope, handler);
- ``sessions``: tokens, binding, scopes, rename, revoke; ``delivery``: mailboxes, pushes,
  leases; ``limits``: rate limits and bounds;
- ``connection``: :class:`Connection` and ``Bindings``, the one writer of its state;
- ``effects``: :class:`Push`, :class:`Wake`, :class:`Drop`, :class:`WaitForMail`, the audit sink;
- ``timefmt``: RFC 3339 timestamps and message ids.
"""

from ..errors import ErrorCode, FrameTooLarge, RpcError
from ..store import MemoryStore, Store
from .broker import Broker, Connection, Drop, Push, WaitForMail, Wake
from .config import BrokerConfig
from .framing import FrameBuffer
from .policy import Admission, DefaultPolicy, PeerCredentials, PeerRule, RulePolicy

__all__ = [
    "Admission",
    "Broker",
    "BrokerConfig",
    "Connection",
    "DefaultPolicy",
    "Drop",
    "ErrorCode",
    "FrameBuffer",
    "FrameTooLarge",
    "MemoryStore",
    "PeerCredentials",
    "PeerRule",
    "Push",
    "RpcError",
    "RulePolicy",
    "Store",
    "WaitForMail",
    "Wake",
]
