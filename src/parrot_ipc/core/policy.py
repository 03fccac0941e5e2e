"""Peer credentials and the admission policy (who may talk to the broker, with which scopes).

Peer credentials come from the kernel (SO_PEERCRED, see unix(7) and socket(7)) and are read by
the OS layer at accept, before any byte. This module only decides; it does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

SCOPE_SEND: Final = "send"
SCOPE_RECEIVE: Final = "receive"
SCOPE_LIST: Final = "list"
SCOPE_RENAME: Final = "rename"
SCOPE_BROADCAST: Final = "broadcast"
SCOPE_ADMIN: Final = "admin"

#: Every scope but ``admin``: what an admitted peer gets when no config file exists.
DEFAULT_SCOPES: Final = frozenset(
    {SCOPE_SEND, SCOPE_RECEIVE, SCOPE_LIST, SCOPE_RENAME, SCOPE_BROADCAST}
)


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The kernel-attested identity of a connected peer (``struct ucred``, unix(7)).

    ``pid``/``uid``/``gid`` are those of the process that called connect(2), pinned by the
    kernel at that moment. ``has_pidfd`` says whether SO_PEERPIDFD gave a pidfd as well.
    """

    pid: int
    uid: int
    gid: int
    has_pidfd: bool = False


@dataclass(frozen=True, slots=True)
class Admission:
    """A policy decision. ``rule`` names the rule that matched (for the audit log)."""

    allowed: bool
    rule: str
    reason: str = ""
    scopes: frozenset[str] = frozenset()


class Policy(Protocol):
    """Decides at accept whether a peer may use the broker at all, and with which scopes."""

    def admit(self, peer: PeerCredentials) -> Admission: ...


class DefaultPolicy:
    """The policy with no config file: admit the broker's own UID and root, refuse all others.

    Args:
        broker_uid: the broker's effective UID.

    Admitted peers get :data:`DEFAULT_SCOPES`; root also gets ``admin``. A refusal carries
    ``reason = "peer_uid_not_allowed"`` (``docs/protocol.md``, Connection life).
    """

    def __init__(self, broker_uid: int) -> None:
        self.broker_uid = broker_uid
        self._root = Admission(True, "default:root", scopes=DEFAULT_SCOPES | {SCOPE_ADMIN})
        self._own = Admission(True, "default:broker_uid", scopes=DEFAULT_SCOPES)
        self._refused = Admission(False, "default", reason="peer_uid_not_allowed")

    def admit(self, peer: PeerCredentials) -> Admission:
        if peer.uid == 0:
            return self._root
        if peer.uid == self.broker_uid:
            return self._own
        return self._refused
