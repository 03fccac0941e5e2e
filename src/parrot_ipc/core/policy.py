"""Peer credentials and the admission policy (who may talk to the broker, with which scopes).

Peer credentials come from the kernel (SO_PEERCRED, see unix(7) and socket(7)) and are read by
the OS layer at accept, before any byte. This module only decides; it does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Final, Literal, Protocol

SCOPE_SEND: Final = "send"
SCOPE_RECEIVE: Final = "receive"
SCOPE_LIST: Final = "list"
SCOPE_RENAME: Final = "rename"
SCOPE_BROADCAST: Final = "broadcast"
SCOPE_ADMIN: Final = "admin"
SCOPE_RESOURCES: Final = "resources"
#: Send to ``name@othernode`` (docs/federation.md). Not in :data:`DEFAULT_SCOPES`: a
#: ``[[peers]]`` rule grants it by listing it; the default policy gives it to root and the
#: broker's own UID.
SCOPE_REMOTE_SEND: Final = "remote_send"
#: Be the broker's relay: drain the outbox, deliver remote mail (docs/federation.md). The
#: default policy gives it only to the broker's own UID.
SCOPE_RELAY: Final = "relay"
ALL_SCOPES: Final = frozenset(
    {SCOPE_SEND, SCOPE_RECEIVE, SCOPE_LIST, SCOPE_RENAME, SCOPE_BROADCAST, SCOPE_ADMIN, SCOPE_RESOURCES,
     SCOPE_REMOTE_SEND, SCOPE_RELAY}
)
Bind = Literal["uid", "process"]

#: Every scope but ``admin``: what an admitted peer gets when no config file exists.
#: ``resources`` (``get_resource``) is in it: any admitted peer may read the broker's resources.
DEFAULT_SCOPES: Final = frozenset(
    {SCOPE_SEND, SCOPE_RECEIVE, SCOPE_LIST, SCOPE_RENAME, SCOPE_BROADCAST, SCOPE_RESOURCES}
)


class ProcessProbe(Protocol):
    """The peer process as the OS layer pinned it at accept (its pidfd, see pidfd_send_signal(2)), so the
    core can ask again, before a request, which program it runs now. Made by
    :func:`parrot_ipc.os.peer.identify_peer`; the shell closes it when the connection ends."""

    def exe(self) -> str | None:
        """The target of ``/proc/<pid>/exe`` now (proc(5)), read while the pinned process is
        proven alive; None if it cannot be read (the process exited, /proc is unreadable, or the
        probe is closed): callers fail closed. Never raises."""
        ...

    def close(self) -> None:
        """Release the pinned process (close its pidfd). Idempotent; :meth:`exe` is None after."""
        ...


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The kernel-attested identity of a connected peer.

    ``pid``/``uid``/``gid`` are SO_PEERCRED's ``struct ucred`` (unix(7)), pinned by the kernel at
    connect(2). The rest is filled in by the OS layer's attestation at accept:

    - ``has_pidfd``: SO_PEERPIDFD gave a pidfd (Linux 6.5+), so the checks below were race-free;
    - ``groups``: supplementary GIDs from SO_PEERGROUPS (the primary ``gid`` is not repeated);
    - ``exe``: the target of ``/proc/<pid>/exe``, read while the process was proven alive;
    - ``start_time``: field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), which tells a
      process apart from a later one that reuses its PID;
    - ``attest_error``: why ``exe``/``start_time`` could not be established, or None;
    - ``process``: the pinned process (:class:`ProcessProbe`) for re-checking ``exe`` before a
      request (issue 13: attestation holds after exec), or None when nothing was pinned.
    """

    pid: int
    uid: int
    gid: int
    has_pidfd: bool = False
    groups: tuple[int, ...] = ()
    exe: str | None = None
    start_time: int | None = None
    attest_error: str | None = None
    process: ProcessProbe | None = field(default=None, compare=False, repr=False)

    def in_group(self, gids: frozenset[int]) -> bool:
        """True if the primary ``gid`` or a supplementary group (SO_PEERGROUPS) is in ``gids``."""
        return self.gid in gids or not gids.isdisjoint(self.groups)


@dataclass(frozen=True, slots=True)
class Admission:
    """A policy decision. ``rule`` names the rule that matched (for the audit log).

    ``may_send_to`` holds fnmatch(3)-style patterns of instance ids this peer may message
    (``("*",)``: anyone). ``names`` holds fnmatch(3)-style patterns of the instance ids this
    peer may claim with ``get_token`` or ``rename`` (``("*",)``: any), ``{user}`` already
    replaced by the peer's login name. ``bind`` is ``"uid"`` (a token works from any process
    of the UID) or ``"process"`` (only from the process, pid and start time, that got it).
    ``pins_exe``: the admission rested on the peer's executable (the rule has ``executables``)
    or binds to its process, so the executable is checked again before every request, and a
    process that has exec'd another program loses its session (-32001 ``peer_exe_changed``).
    """

    allowed: bool
    rule: str
    reason: str = ""
    scopes: frozenset[str] = frozenset()
    may_send_to: tuple[str, ...] = ("*",)
    bind: Bind = "uid"
    names: tuple[str, ...] = ("*",)
    pins_exe: bool = False

    def may_send(self, instance_id: str) -> bool:
        """True if ``instance_id`` matches a ``may_send_to`` pattern (fnmatch(3), case-sensitive)."""
        return _matches(instance_id, self.may_send_to)

    def may_claim(self, instance_id: str) -> bool:
        """True if ``instance_id`` matches a ``names`` pattern (fnmatch(3), case-sensitive)."""
        return _matches(instance_id, self.names)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    """True if ``name`` matches one of the fnmatch(3) ``patterns`` (``"*"`` matches all)."""
    if patterns == ("*",):
        return True
    return any(p == "*" or fnmatchcase(name, p) for p in patterns)


#: The placeholder in a rule's ``names`` patterns for the peer's login name (issue 13).
USER_PLACEHOLDER: Final = "{user}"
#: Looks up the login name of a UID (getpwuid(3)); None if no user has it. Injected by the
#: app layer: the core does no I/O.
UserNames = Callable[[int], str | None]


class Policy(Protocol):
    """Decides at accept whether a peer may use the broker at all, and with which scopes."""

    def admit(self, peer: PeerCredentials) -> Admission:
        """The decision for ``peer`` (kernel credentials, read before any byte). Never raises."""
        ...


@dataclass(frozen=True, slots=True)
class RemoteRule:
    """One ``[[remote]]`` rule: mail from a node matching one of ``nodes`` may be delivered to
    a local name matching one of ``names`` (fnmatch(3) patterns, case-sensitive)."""

    label: str
    nodes: tuple[str, ...]
    names: tuple[str, ...] = ("*",)

    def allows(self, node: str, name: str) -> bool:
        """True if ``node`` matches a node pattern and ``name`` a name pattern."""
        return (any(fnmatchcase(node, p) for p in self.nodes)
                and any(fnmatchcase(name, p) for p in self.names))


@dataclass(frozen=True, slots=True)
class RemoteRules:
    """The ``[[remote]]`` table: which remote nodes may deliver to which local names. No rule
    matching is a refusal (``remote_not_allowed``, audited and bounced; docs/federation.md)."""

    rules: tuple[RemoteRule, ...]

    def allowing(self, node: str, name: str) -> str | None:
        """The label of the first rule that lets ``node`` deliver to ``name``, or None."""
        for rule in self.rules:
            if rule.allows(node, name):
                return rule.label
        return None


def remote_rules_of(policy: object) -> RemoteRules:
    """The ``[[remote]]`` rules a policy carries (:class:`DefaultPolicy` and
    :class:`RulePolicy` do); a policy without them refuses every remote node."""
    rules = getattr(policy, "remote", None)
    return rules if isinstance(rules, RemoteRules) else RemoteRules(())


class DefaultPolicy:
    """The policy with no config file: admit the broker's own UID and root, refuse all others.

    Args:
        broker_uid: the broker's effective UID.

    Admitted peers get :data:`DEFAULT_SCOPES` and ``remote_send``; root also gets ``admin``,
    the broker's own UID ``relay`` (only it may run ``parrot-ipc relay``). A refusal carries
    ``reason = "peer_uid_not_allowed"`` (``docs/protocol.md``, Connection life).
    """

    def __init__(self, broker_uid: int, remote: RemoteRules | None = None) -> None:
        self.broker_uid = broker_uid
        #: The ``[[remote]]`` rules (docs/federation.md); none: every remote node is refused.
        self.remote = remote or RemoteRules(())
        # A broker run as root has root as its own UID: then root is also the relay.
        root_extra = {SCOPE_RELAY} if broker_uid == 0 else set()
        self._root = Admission(True, "default:root",
                               scopes=DEFAULT_SCOPES | {SCOPE_ADMIN, SCOPE_REMOTE_SEND} | root_extra)
        self._own = Admission(True, "default:broker_uid",
                              scopes=DEFAULT_SCOPES | {SCOPE_REMOTE_SEND, SCOPE_RELAY})
        self._refused = Admission(False, "default", reason="peer_uid_not_allowed")

    def admit(self, peer: PeerCredentials) -> Admission:
        """Root gets every default scope plus ``admin``; the broker's UID the defaults; others are refused."""
        if peer.uid == 0:
            return self._root
        if peer.uid == self.broker_uid:
            return self._own
        return self._refused


@dataclass(frozen=True, slots=True)
class PeerRule:
    """One ``[[peers]]`` rule with names already resolved to numbers (by the config loader).

    A peer matches when its UID is in ``uids`` (if any are given) and its primary or a
    supplementary GID is in ``gids`` (if any are given), and, if ``executables`` is non-empty,
    its attested executable matches one of those fnmatch(3) patterns. ``names`` limits the
    instance ids the peer may claim (fnmatch(3); ``{user}`` is the peer's login name).
    """

    label: str
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    executables: tuple[str, ...] = ()
    scopes: frozenset[str] = DEFAULT_SCOPES
    may_send_to: tuple[str, ...] = ("*",)
    bind: Bind = "uid"
    names: tuple[str, ...] = ("*",)
    _admission: Admission = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_admission", Admission(
            True, self.label, scopes=self.scopes, may_send_to=self.may_send_to, bind=self.bind,
            names=self.names, pins_exe=bool(self.executables) or self.bind == "process"))

    def admission_for(self, peer: PeerCredentials, user_names: UserNames | None) -> Admission:
        """The rule's admission for ``peer``: ``{user}`` in ``names`` becomes the peer's login
        name (``user_names(peer.uid)``); a pattern with ``{user}`` matches nothing when the UID
        has no name or no lookup is given (fail closed)."""
        if not any(USER_PLACEHOLDER in n for n in self.names):
            return self._admission
        user = None if user_names is None else user_names(peer.uid)
        names = tuple(n.replace(USER_PLACEHOLDER, user) if user else "" for n in self.names)
        return replace(self._admission, names=tuple(n for n in names if n) or ("",))

    def matches_identity(self, peer: PeerCredentials) -> bool:
        """True if ``peer`` passes the rule's ``uids`` and ``gids`` filters (an empty filter passes)."""
        if self.uids and peer.uid not in self.uids:
            return False
        return not self.gids or peer.in_group(self.gids)

    def matches_exe(self, exe: str) -> bool:
        """True if the absolute path ``exe`` matches one of ``executables`` (fnmatch(3) patterns)."""
        return any(fnmatchcase(exe, pattern) for pattern in self.executables)


class RulePolicy:
    """The policy of a config file: ``[[peers]]`` rules, first match wins, no match is refused.

    Args:
        rules: the rules in file order.
        user_names: the login name of a UID (for ``{user}`` in ``names``), or None.

    Refusal reasons (``error.data.reason``): ``peer_not_allowed`` when no rule matches;
    ``peer_attestation_failed`` when a rule matching the peer's UID/GID needs its executable
    and the executable could not be established without a race (the peer exited, or
    ``/proc`` could not be read): fail closed.
    """

    def __init__(self, rules: Sequence[PeerRule], user_names: UserNames | None = None,
                 remote: RemoteRules | None = None) -> None:
        self.rules = tuple(rules)
        self._user_names = user_names
        #: The ``[[remote]]`` rules (docs/federation.md); none: every remote node is refused.
        self.remote = remote or RemoteRules(())

    def admit(self, peer: PeerCredentials) -> Admission:
        """The first matching rule's admission, or a refusal (reasons in the class docstring)."""
        for rule in self.rules:
            if not rule.matches_identity(peer):
                continue
            if rule.bind == "process" and peer.start_time is None:
                return Admission(False, rule.label, reason="peer_attestation_failed")
            if rule.executables:
                if peer.exe is None:
                    return Admission(False, rule.label, reason="peer_attestation_failed")
                if not rule.matches_exe(peer.exe):
                    continue
            return rule.admission_for(peer, self._user_names)
        return Admission(False, "no_rule", reason="peer_not_allowed")
