"""The store: where the broker's state is kept.

- :mod:`.base`: the records (:class:`Session`, :class:`StoredMessage`) and the interfaces
  (:class:`Store`, what the core needs kept; :class:`Journaled`, what the shell commits);
- :mod:`.memory`: :class:`MemoryStore`, the whole store of a throwaway broker and the mirror of
  the durable one;
- :mod:`.ops`: the journal ops and the one op->SQL table;
- :mod:`.sqlite` (:class:`~parrot_ipc.store.sqlite.SqliteStore`), :mod:`.schema` and
  :mod:`.statedir`: the durable store. Not imported here: they do file I/O, and the core imports
  this package, which must stay sans-I/O (``tests/store/test_layer.py``).
"""

from .base import Journaled, Session, Store, StoredMessage
from .memory import MemoryStore

__all__ = ["Journaled", "MemoryStore", "Session", "Store", "StoredMessage"]
