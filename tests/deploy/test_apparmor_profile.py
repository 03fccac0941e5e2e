"""apparmor/parrot-ipc: it compiles (``apparmor_parser -Q -K`` against the packaged feature
set), it is a named profile (attached by the unit's ``AppArmorProfile=``), and its rules say
what the issue asks: unix only, no capabilities, no ptrace, writes only to the broker's
runtime and state directories.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "apparmor" / "parrot-ipc"
FEATURES = "/usr/share/apparmor-features/features"
WRITABLE = ("/run/parrot-mcp/", "/var/lib/parrot-mcp/")


def _rules() -> list[str]:
    """The profile's rule lines, without comments and blank lines."""
    out = []
    for line in PROFILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip() if not line.strip().startswith("#include") else line.strip()
        if line:
            out.append(line)
    return out


def test_profile_compiles(tool: Callable[[str], str], host_file: Callable[[str], str]) -> None:
    res = subprocess.run([tool("apparmor_parser"), "-Q", "-K", "--features-file", host_file(FEATURES), str(PROFILE)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_broken_profile_does_not_compile(tool: Callable[[str], str], host_file: Callable[[str], str],
                                           tmp_path: Path) -> None:
    """The check above is not vacuous."""
    bad = tmp_path / "parrot-ipc"
    bad.write_text(PROFILE.read_text().replace("network unix,", "network unixx,"))
    res = subprocess.run([tool("apparmor_parser"), "-Q", "-K", "--features-file", host_file(FEATURES), str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


def test_profile_is_named_and_attached_by_the_unit() -> None:
    rules = _rules()
    heads = [r for r in rules if r.startswith("profile ")]
    # "profile NAME flags=... {" with no attachment path: a path on the console script would
    # never match (the kernel execs the interpreter), so it would confine nothing.
    assert heads and re.fullmatch(r"profile parrot-ipc( flags=\([a-z,]+\))? \{", heads[0]), heads
    unit = (REPO / "systemd" / "parrot-ipc.service").read_text()
    assert re.search(r"^AppArmorProfile=parrot-ipc$", unit, re.M)


def test_network_is_unix_only_and_no_privilege() -> None:
    rules = _rules()
    for family in ("inet", "inet6", "raw", "packet"):
        assert f"deny network {family}," in rules, family
    allowed_net = [r for r in rules if r.startswith("network ")]
    assert allowed_net == ["network unix,"], allowed_net
    assert "deny capability," in rules and "deny ptrace," in rules
    assert not [r for r in rules if r.startswith(("capability", "ptrace", "allow capability", "allow ptrace"))]


def test_writes_only_to_the_runtime_and_state_directories() -> None:
    for rule in _rules():
        m = re.fullmatch(r"(?:owner )?(/\S+) ([rwkmlix]+),", rule)
        if m is None or "w" not in m.group(2):
            continue
        path = m.group(1)
        # /run/systemd/notify: the sd_notify(3) socket (a connect, the only "write" to it).
        assert path.startswith(WRITABLE) or path == "/run/systemd/notify", rule
    assert "/etc/parrot-ipc/** r," in _rules()
