"""A connection's state as the core sees it, and the one object that changes it.

A :class:`Connection` carries its peer, its admission, its session, whether it subscribed, and
the ids of the messages pushed to it and not yet acked. Those last three must move together:
unbinding a connection unsubscribes it and forgets its in-flight pushes, and a message acked,
re-queued or expired must leave both the connection's window and the broker's index of pushed
ids. :class:`Bindings` is the only code that writes them; elsewhere they are read-only
(``Connection.session`` and ``Connection.subscribed`` are properties).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from ..store import Session
from .limits import TokenBucket
from .policy import Admission, PeerCredentials


class Connection:
    """The core's view of one client connection: its peer, its admission and its session.

    Made by :meth:`parrot_ipc.core.broker.Broker.accept`; the shell passes it back with each
    frame. ``conn_id`` counts from 1 per broker. ``session``, ``subscribed`` and the push window
    change only through :class:`Bindings`.
    """

    __slots__ = ("_inflight", "_session", "_subscribed", "admission", "bucket", "conn_id", "peer")

    def __init__(self, conn_id: int, peer: PeerCredentials, admission: Admission,
                 bucket: TokenBucket | None = None) -> None:
        self.bucket = bucket
        self.conn_id = conn_id
        self.peer = peer
        self.admission = admission
        self._session: Session | None = None
        self._subscribed = False
        self._inflight: dict[str, None] = {}  # ids pushed and not acked (a dict: smaller than a set)

    @property
    def session(self) -> Session | None:
        """The session bound by ``get_token`` or ``authenticate``, or None."""
        return self._session

    @property
    def subscribed(self) -> bool:
        """True after ``subscribe``, until the connection is unbound (mail is pushed to it)."""
        return self._subscribed

    @property
    def instance_id(self) -> str | None:
        """The instance this connection acts as, or None before get_token/authenticate."""
        s = self._session
        return None if s is None or s.revoked else s.instance_id

    def push_room(self, window: int) -> int:
        """How many more messages may be pushed before acks, under a ``push_window`` of ``window``."""
        return window - len(self._inflight)

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} uid={self.peer.uid} pid={self.peer.pid} as={self.instance_id}>"


class Bindings:
    """Which connections act as which instance, and which pushed messages await an ack.

    Keeps three facts in step: a connection's ``session`` and ``subscribed``, the index from
    instance id to its bound connections, and the index from pushed message id to the
    connection it was pushed to (plus that connection's window). Every change goes through one
    of these methods.
    """

    __slots__ = ("_by_name", "_pushed")

    def __init__(self) -> None:
        self._by_name: dict[str, set[Connection]] = {}
        self._pushed: dict[str, Connection] = {}

    # ------------------------------------------------------------------ sessions
    def bind(self, conn: Connection, session: Session) -> None:
        """Make ``conn`` act as ``session`` (unbinding it from any earlier one first)."""
        self.unbind(conn)
        conn._session = session
        self._by_name.setdefault(session.instance_id, set()).add(conn)

    def unbind(self, conn: Connection) -> None:
        """Detach ``conn`` from its instance: unsubscribed, its in-flight pushes forgotten
        (their leases run out and the mail is delivered again). Its ``session`` stays readable,
        so a later request still learns why it was refused."""
        s = conn._session
        if s is not None:
            bound = self._by_name.get(s.instance_id)
            if bound is not None:
                bound.discard(conn)
                if not bound:
                    del self._by_name[s.instance_id]
        conn._subscribed = False
        for mid in conn._inflight:
            self._pushed.pop(mid, None)
        conn._inflight.clear()

    def unbind_session(self, session: Session) -> None:
        """Unbind every connection bound to ``session`` (it was revoked or replaced)."""
        for conn in list(self._by_name.get(session.instance_id, ())):
            if conn._session is session:
                self.unbind(conn)

    def rename(self, old: str, new: str) -> None:
        """Move the connections bound under ``old`` to ``new`` (their session was renamed)."""
        conns = self._by_name.pop(old, None)
        if conns:
            self._by_name.setdefault(new, set()).update(conns)

    def subscribe(self, conn: Connection) -> None:
        """Mark ``conn`` subscribed: ready mail for its instance is pushed to it."""
        conn._subscribed = True

    # ------------------------------------------------------------------ pushes
    def pushed(self, conn: Connection, message_id: str) -> None:
        """Record that ``message_id`` was pushed to ``conn`` and awaits its ack."""
        conn._inflight[message_id] = None
        self._pushed[message_id] = conn

    def is_pushed(self, message_id: str) -> bool:
        """True while ``message_id`` is pushed to some connection and not yet settled."""
        return message_id in self._pushed

    def settle(self, message_ids: Iterable[str]) -> None:
        """Forget pushes of ``message_ids`` (acked, re-queued or expired); frees window room."""
        pushed = self._pushed
        for mid in message_ids:
            holder = pushed.pop(mid, None)
            if holder is not None:
                holder._inflight.pop(mid, None)

    # ------------------------------------------------------------------ queries
    def connections(self, name: str) -> Collection[Connection]:
        """The connections bound under instance ``name`` (possibly of a dead session)."""
        return self._by_name.get(name, ())

    def online(self, name: str, session: Session | None) -> bool:
        """True if a connection under ``name`` is bound to exactly ``session``."""
        return session is not None and any(c._session is session for c in self._by_name.get(name, ()))

    def names(self) -> list[str]:
        """Instance ids with at least one bound connection."""
        return list(self._by_name)

    def __len__(self) -> int:
        """How many instance ids have at least one bound connection."""
        return len(self._by_name)
