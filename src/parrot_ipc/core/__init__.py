"""The sans-I/O core: framing, protocol schema, policy and broker state.

Imports neither ``trio`` nor ``socket``, and makes no OS calls (``tests/core/test_sans_io.py``).
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
