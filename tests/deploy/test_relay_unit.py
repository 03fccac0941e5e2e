"""``systemd/parrot-ipc-relay.service``: ``systemd-analyze verify`` prints nothing, its offline
exposure is within the broker's target (1.0), and it is the only unit that may use the network
(the broker's keeps ``AF_UNIX`` only and ``PrivateNetwork=yes``)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from test_systemd_units import MAX_EXPOSURE, SYSTEM_EXEC, SYSTEMD, _keys, _local_exec

RELAY = SYSTEMD / "parrot-ipc-relay.service"
_LEVEL = re.compile(r"Overall exposure level for parrot-ipc-relay\.service:\s*(\d+(?:\.\d+)?)")


def _copy(tmp_path: Path) -> Path:
    text = RELAY.read_text()
    assert SYSTEM_EXEC in text
    dst = tmp_path / "parrot-ipc-relay.service"
    dst.write_text(text.replace(SYSTEM_EXEC, _local_exec()))
    return dst


def test_relay_unit_verifies_without_any_warning(tool: Callable[[str], str], tmp_path: Path) -> None:
    res = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", str(_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout + res.stderr == "", f"systemd-analyze verify warned:\n{res.stdout}{res.stderr}"


def test_relay_unit_exposure_is_within_the_brokers_target(tool: Callable[[str], str], tmp_path: Path) -> None:
    res = subprocess.run([tool("systemd-analyze"), "security", "--offline=true", "--threshold=10",
                          "--no-pager", str(_copy(tmp_path))], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    m = _LEVEL.search(out)
    assert m is not None, out
    print(f"relay exposure level: {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, out
    assert res.returncode == 0, out


def test_only_the_relay_unit_has_the_network() -> None:
    relay, broker = _keys(RELAY), _keys(SYSTEMD / "parrot-ipc.service")
    assert relay["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "PrivateNetwork" not in relay
    assert broker["RestrictAddressFamilies"] == ["AF_UNIX"] and broker["PrivateNetwork"] == ["yes"]
    assert broker["IPAddressDeny"] == ["any"] and "IPAddressAllow" not in broker
    assert relay["IPAddressDeny"] == ["any"] and relay["IPAddressAllow"] == ["localhost"]
    for key in ("NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet", "SystemCallFilter",
                "MemoryDenyWriteExecute", "PrivateUsers", "User"):
        assert relay[key] == broker[key], key
