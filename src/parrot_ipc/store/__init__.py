"""The store: the Store interface (:mod:`.base`), the in-memory store (:mod:`.memory`) and the
durable SQLite store (:mod:`.sqlite`, imported on demand so the core's closure stays sans-I/O)."""

from .base import Journaled, Session, Store, StoredMessage
from .memory import MemoryStore

__all__ = ["Journaled", "MemoryStore", "Session", "Store", "StoredMessage"]
