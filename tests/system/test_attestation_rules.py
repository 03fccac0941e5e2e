"""Which ``[[peers]]`` rules can match, given what the broker can attest (docs/configuration.md,
"Which peers can be attested"): the judgement, ``check-config``'s exit 2 with a reason, and
doctor's ``policy`` row. Quick tests without a container; the same rule is proved under a real
systemd by ``test_real_systemd.py::test_executables_rules_under_the_shipped_unit``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from parrot_ipc.app import doctor
from parrot_ipc.app.attestation import BrokerFacts, never_matches, partly_unattestable
from parrot_ipc.core.policy import PeerRule

SERVICE = 997
UNPRIVILEGED = BrokerFacts(SERVICE, ptrace_others=False, source="test")
SHIPPED_UNIT = {"User": "parrot-mcp", "PrivateUsers": "yes", "ProtectProc": "invisible", "CapabilityBoundingSet": ""}
DROP_IN = {**SHIPPED_UNIT, "PrivateUsers": "no"}  # the drop-in docs/configuration.md gives for executables


def test_an_unprivileged_broker_cannot_attest_another_uid() -> None:
    rule = PeerRule("root-python", uids=frozenset({0}), executables=("/usr/bin/python3*",))
    reason = never_matches(rule, UNPRIVILEGED)
    assert reason is not None and "ptrace" in reason and "peer_attestation_failed" in reason
    bound = PeerRule("root-bound", uids=frozenset({0}), bind="process")
    assert 'bind = "process"' in (never_matches(bound, UNPRIVILEGED) or "")


def test_rules_the_broker_can_attest_pass() -> None:
    own = PeerRule("own", uids=frozenset({SERVICE}), executables=("/usr/bin/python3*",))
    plain = PeerRule("root", uids=frozenset({0}))
    groups_only = PeerRule("group", gids=frozenset({5}), executables=("/usr/bin/node",))
    assert [never_matches(r, UNPRIVILEGED) for r in (own, plain, groups_only)] == [None, None, None]
    root_broker = BrokerFacts.of_process(0, "test")
    assert never_matches(PeerRule("r", uids=frozenset({1000}), executables=("/x",)), root_broker) is None


def test_private_users_hides_other_uids_and_every_executable() -> None:
    facts = BrokerFacts.of_unit(SHIPPED_UNIT, SERVICE, "the loaded unit")
    assert facts.private_users and not facts.ptrace_others
    reason = never_matches(PeerRule("alice", uids=frozenset({1000})), facts)
    assert reason is not None and "PrivateUsers=yes" in reason and "65534" in reason
    # In a user namespace of its own the broker cannot read even its own UID's /proc/<pid>/exe.
    own = PeerRule("own", uids=frozenset({SERVICE}), executables=("/usr/bin/python3*",))
    assert "user namespace of its own" in (never_matches(own, facts) or "")
    assert "PrivateUsers=no" in (never_matches(PeerRule("g", gids=frozenset({5}), bind="process"), facts) or "")
    opened = BrokerFacts.of_unit(DROP_IN, SERVICE, "the loaded unit")
    mixed = PeerRule("mixed", uids=frozenset({0, SERVICE, 1000}), executables=("/usr/bin/python3*",))
    assert never_matches(own, opened) is None and never_matches(mixed, opened) is None
    assert partly_unattestable(mixed, opened) == [0, 1000]


def test_doctor_policy_row_reads_the_loaded_unit() -> None:
    def read_unit(unit: str, names: object, user: bool = False) -> dict[str, str]:
        assert unit == "parrot-ipc.service" and not user
        return {**SHIPPED_UNIT, "User": str(SERVICE)}

    facts = doctor.broker_facts(0, read_unit)
    assert (facts.uid, facts.private_users, facts.ptrace_others) == (SERVICE, True, False)
    bad = doctor.check_policy([PeerRule("root-python", uids=frozenset({0}), executables=("/usr/bin/python3*",))], facts)
    assert bad.status == "FAIL" and bad.detail.startswith("root-python:") and "configuration.md" in bad.fix
    mixed = [PeerRule("mixed", uids=frozenset({0, SERVICE}), executables=("/x",))]
    assert doctor.check_policy(mixed, facts).status == "FAIL"
    partly = doctor.check_policy(mixed, BrokerFacts.of_unit(DROP_IN, SERVICE, "the loaded unit"))
    assert partly.status == "WARN" and "mixed: UIDs 0" in partly.detail
    assert doctor.check_policy(None, facts).status == "PASS"
    assert doctor.check_policy([PeerRule("root", uids=frozenset({0}))], facts).status == "PASS"


def _check_config(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parrot_ipc", "check-config", str(path), *extra],
                          capture_output=True, text=True, timeout=60)


def test_check_config_fails_a_rule_that_can_never_match(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[peers]]\nname = "root-python"\nuids = [0]\nexecutables = ["/usr/bin/python3*"]\n')
    cfg.chmod(0o644)
    other = "65534" if os.geteuid() == 0 else str(os.geteuid())  # an unprivileged broker
    res = _check_config(cfg, "--broker-user", other)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "a rule can never match: root-python:" in res.stderr and "ptrace read access" in res.stderr
    doc = json.loads(_check_config(cfg, "--broker-user", other, "--json").stdout)
    assert doc["error"]["reason"] == "rule_never_matches" and doc["error"]["rules"][0].startswith("root-python:")
    if os.geteuid() == 0:  # a root broker may read every /proc/<pid>/exe
        assert _check_config(cfg, "--broker-user", "0").returncode == 0
    assert _check_config(cfg, "--broker-user", "no-such-user-xyz").returncode == 2
