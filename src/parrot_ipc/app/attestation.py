"""Which peers the broker can attest, and so which ``[[peers]]`` rules can never match.

A rule with ``executables`` (or ``bind = "process"``) needs the peer's attested executable: the
broker reads ``/proc/<pid>/exe`` (:func:`parrot_ipc.os.peer.attest_process`). proc(5): reading
that link "is governed by a ptrace access mode PTRACE_MODE_READ_FSCREDS check" (ptrace(2)).
That check passes only if

- the broker has the peer's UIDs and GIDs and the peer is dumpable, **and** the broker is in
  the peer's user namespace (the kernel's commoncap check, ``cap_ptrace_access_check``), or
- the broker has ``CAP_SYS_PTRACE`` in the peer's user namespace.

So an unprivileged broker attests only processes of its own UID, and only without
``PrivateUsers=yes`` (which puts it in a user namespace of its own, where no peer is: then it
attests nobody, not even its own UID). For root's and every other UID's processes the read
fails, and a rule whose UID/GID part matches refuses them with ``peer_attestation_failed``.
``ProtectProc=invisible`` hides other UIDs' ``/proc/<pid>`` as well; and ``PrivateUsers=yes``
shows SO_PEERCRED's UID of any peer but root and the service user as 65534, so rules naming
them never match at all (systemd.exec(5)).

:class:`BrokerFacts` says what the broker is allowed; :func:`never_matches` and
:func:`partly_unattestable` judge one rule. ``check-config`` and ``doctor`` both use them.
Proved under a real systemd by
``tests/system/test_real_systemd.py::test_executables_rules_under_the_shipped_unit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from ..core.policy import PeerRule

#: The UID the kernel shows for a UID outside the broker's user namespace (overflowuid).
OVERFLOW_UID: Final = 65534


@dataclass(frozen=True)
class BrokerFacts:
    """What the broker process may see of its peers.

    Attributes:
        uid: the broker's UID.
        ptrace_others: it may read other UIDs' ``/proc/<pid>/exe`` (UID 0 with
            ``CAP_SYS_PTRACE`` in the host's user namespace).
        private_users: ``PrivateUsers=yes``: only UID 0 and ``uid`` are visible as themselves,
            and the broker shares no user namespace with any peer.
        source: where these facts come from, for messages (``the loaded unit ...``).
    """

    uid: int
    ptrace_others: bool
    private_users: bool = False
    source: str = ""

    @classmethod
    def of_process(cls, uid: int, source: str) -> BrokerFacts:
        """A broker run directly as ``uid`` (no unit): root may ptrace-read everyone, others not."""
        return cls(uid, ptrace_others=uid == 0, source=source)

    @classmethod
    def of_unit(cls, props: Mapping[str, str], uid: int, source: str) -> BrokerFacts:
        """From ``systemctl show`` properties (``PrivateUsers``, ``CapabilityBoundingSet``) of a
        unit whose ``User=`` resolves to ``uid``."""
        private = props.get("PrivateUsers", "no") == "yes"
        caps = props.get("CapabilityBoundingSet", "").split()
        return cls(uid, ptrace_others=uid == 0 and "cap_sys_ptrace" in caps and not private,
                   private_users=private, source=source)

    def attestable(self, uid: int) -> bool:
        """True if the broker can read ``/proc/<pid>/exe`` of a process of ``uid``."""
        return self.ptrace_others or (uid == self.uid and not self.private_users)

    def visible(self, uid: int) -> bool:
        """True if SO_PEERCRED shows ``uid`` as itself (not as :data:`OVERFLOW_UID`)."""
        return not self.private_users or uid in (0, self.uid)


def _names(uids: Iterable[int]) -> str:
    return ", ".join(str(u) for u in sorted(uids))


def never_matches(rule: PeerRule, facts: BrokerFacts) -> str | None:
    """Why ``rule`` can never admit anyone under ``facts``, or None if it can.

    Under ``PrivateUsers=yes`` a rule that needs the executable never matches; otherwise only
    rules with ``uids``/``users`` are judged (a ``groups``-only rule may match the broker's own
    UID).
    """
    needs = [what for what, on in (("executables", bool(rule.executables)),
                                   ('bind = "process"', rule.bind == "process")) if on]
    if needs and facts.private_users and not facts.ptrace_others:
        return (f"{rule.label}: {' and '.join(needs)} need the peer's /proc/<pid>/exe, but {facts.source} has "
                f"PrivateUsers=yes: the broker is in a user namespace of its own, and the kernel lets it read "
                f"that link of no process outside it (ptrace read access needs the same user namespace, or "
                f"CAP_SYS_PTRACE); every peer would be refused (peer_attestation_failed). Add a drop-in with "
                f"PrivateUsers=no")
    if not rule.uids:
        return None
    seen = {u for u in rule.uids if facts.visible(u)}
    if not seen:
        return (f"{rule.label}: names only UIDs {_names(rule.uids)}, but {facts.source} has PrivateUsers=yes: "
                f"every UID but 0 and {facts.uid} reaches the broker as {OVERFLOW_UID}")
    if needs and not any(facts.attestable(u) for u in seen):
        return (f"{rule.label}: {' and '.join(needs)} need the peer's /proc/<pid>/exe, which the broker "
                f"(UID {facts.uid}, {facts.source}) can read only for its own UID: another UID's needs ptrace "
                f"read access (CAP_SYS_PTRACE); UIDs {_names(seen)} would always be refused "
                f"(peer_attestation_failed)")
    return None


def partly_unattestable(rule: PeerRule, facts: BrokerFacts) -> list[int]:
    """The UIDs of ``rule`` that it names but will always refuse (sorted): not visible, or
    needing an executable the broker cannot read. Empty when the rule works for all of them."""
    needs = bool(rule.executables) or rule.bind == "process"
    return sorted(u for u in rule.uids if not facts.visible(u) or (needs and not facts.attestable(u)))
