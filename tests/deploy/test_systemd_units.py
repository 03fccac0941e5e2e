"""The systemd units: ``systemd-analyze verify`` prints nothing, the service's offline exposure
is at most 1.0, the sysusers file creates the user, and the units say what the issue asks.

``systemd-analyze verify`` reports unknown keys and bad values as warnings with exit code 0,
so any output at all fails these tests. It also checks that ExecStart's binary exists: the
units name /opt/parrot-ipc/venv/bin/parrot-ipc (or ~/.local/bin for the user units), so the
tests verify a temporary copy whose ExecStart names this venv's parrot-ipc instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
SYSTEM_EXEC = "/opt/parrot-ipc/venv/bin/parrot-ipc"
USER_EXEC = "%h/.local/bin/parrot-ipc"
MAX_EXPOSURE = 1.0
_EXPOSURE = re.compile(r"Overall exposure level for parrot-ipc\.service:\s*(\d+(?:\.\d+)?)")


def _local_exec() -> str:
    script = Path(sys.executable).parent / "parrot-ipc"
    return str(script) if script.exists() else (shutil.which("parrot-ipc") or sys.executable)


def _copy_units(src: Path, dst: Path, exec_path: str) -> tuple[Path, Path]:
    dst.mkdir(parents=True, exist_ok=True)
    service = (src / "parrot-ipc.service").read_text()
    assert exec_path in service, f"ExecStart no longer names {exec_path}: update this test and the docs"
    (dst / "parrot-ipc.service").write_text(service.replace(exec_path, _local_exec()))
    shutil.copy(src / "parrot-ipc.socket", dst / "parrot-ipc.socket")
    return dst / "parrot-ipc.service", dst / "parrot-ipc.socket"


def _keys(path: Path) -> dict[str, list[str]]:
    """``Key`` -> every value it is given in the unit file (comments and sections ignored)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_system_units_verify_without_any_warning(tool: Callable[[str], str], tmp_path: Path) -> None:
    service, socket = _copy_units(SYSTEMD, tmp_path, SYSTEM_EXEC)
    res = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", str(service), str(socket)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout + res.stderr == "", f"systemd-analyze verify warned:\n{res.stdout}{res.stderr}"


def test_verify_output_is_what_catches_a_bad_key(tool: Callable[[str], str], tmp_path: Path) -> None:
    """The check above is not vacuous: a bad key or value is printed (with exit code 0)."""
    service, socket = _copy_units(SYSTEMD, tmp_path, SYSTEM_EXEC)
    service.write_text(service.read_text().replace("UMask=0077", "UMask=0077\nProtectSystm=strict"))
    res = subprocess.run([tool("systemd-analyze"), "verify", "--man=no", str(service), str(socket)],
                         capture_output=True, text=True, timeout=60)
    assert "ProtectSystm" in res.stdout + res.stderr


def test_user_units_verify_without_any_warning(tool: Callable[[str], str], tmp_path: Path) -> None:
    service, socket = _copy_units(SYSTEMD / "user", tmp_path / "units", USER_EXEC)
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path)}
    res = subprocess.run([tool("systemd-analyze"), "--user", "verify", "--man=no", str(service), str(socket)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout + res.stderr == "", f"systemd-analyze --user verify warned:\n{res.stdout}{res.stderr}"


def test_service_exposure_is_at_most_1_0(tool: Callable[[str], str], tmp_path: Path) -> None:
    """``systemd-analyze security --offline=true``: exposure <= 1.0 (the aim is <= 0.5).

    systemd 252 parses ``--threshold`` as an integer on the internal 0-100 scale (the printed
    level times 10), so ``--threshold=10`` is the issue's "1.0"; a higher level exits non-zero.
    """
    service, _ = _copy_units(SYSTEMD, tmp_path, SYSTEM_EXEC)
    res = subprocess.run([tool("systemd-analyze"), "security", "--offline=true", "--threshold=10",
                          "--no-pager", str(service)], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    m = _EXPOSURE.search(out)
    assert m is not None, out
    level = float(m.group(1))
    print(f"exposure level: {level}")
    assert level <= MAX_EXPOSURE, out
    assert res.returncode == 0, out


def test_sysusers_file_creates_the_service_user(tool: Callable[[str], str], tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    res = subprocess.run([tool("systemd-sysusers"), "--dry-run", f"--root={tmp_path}",
                          str(SYSTEMD / "parrot-ipc.sysusers.conf")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "Creating user 'parrot-mcp'" in out, out
    assert "ignoring" not in out.lower() and "fail" not in out.lower(), out


def test_socket_unit_is_private_and_apart_from_the_runtime_directory() -> None:
    sock = _keys(SYSTEMD / "parrot-ipc.socket")
    assert sock["ListenStream"] == ["/run/parrot-mcp/mcp.sock"]
    assert sock["SocketMode"] == ["0600"] and sock["DirectoryMode"] == ["0700"]
    assert sock["SocketUser"] == ["parrot-mcp"] and sock["SocketGroup"] == ["parrot-mcp"]
    service = _keys(SYSTEMD / "parrot-ipc.service")
    # systemd issue #8635: a RuntimeDirectory= holding the socket is removed when the service stops.
    assert "parrot-mcp" not in " ".join(service.get("RuntimeDirectory", []))
    user_sock = _keys(SYSTEMD / "user" / "parrot-ipc.socket")
    assert user_sock["ListenStream"] == ["%t/parrot-mcp/mcp.sock"]
    assert user_sock["SocketMode"] == ["0600"] and user_sock["DirectoryMode"] == ["0700"]


def test_service_unit_has_the_required_settings() -> None:
    s = _keys(SYSTEMD / "parrot-ipc.service")
    assert s["Type"] == ["notify"]
    assert s["User"] == ["parrot-mcp"]
    assert s["StateDirectory"] == ["parrot-mcp"] and s["StateDirectoryMode"] == ["0700"]
    assert s["ConfigurationDirectory"] == ["parrot-ipc"]
    assert int(s["LimitNOFILE"][0]) >= 2 * 10_000  # a socket and a pidfd per connection
    for key, value in [("ProtectSystem", "strict"), ("PrivateNetwork", "yes"), ("NoNewPrivileges", "yes"),
                       ("RestrictAddressFamilies", "AF_UNIX"), ("CapabilityBoundingSet", "")]:
        assert s[key] == [value], key
    assert "@system-service" in s["SystemCallFilter"]
    # A named profile, not "-parrot-ipc": an unloaded profile must fail the unit, not be skipped.
    assert s["AppArmorProfile"] == ["parrot-ipc"]
    assert s["ExecStart"][0].startswith(SYSTEM_EXEC + " serve ")
    sysusers = (SYSTEMD / "parrot-ipc.sysusers.conf").read_text()
    assert re.search(r"^u\s+parrot-mcp\s", sysusers, re.M)


@pytest.mark.parametrize("unit", ["parrot-ipc.service", "user/parrot-ipc.service"])
def test_service_exec_start_names_the_socket_it_is_activated_on(unit: str) -> None:
    s = _keys(SYSTEMD / unit)
    sock = _keys(SYSTEMD / unit.replace(".service", ".socket"))
    assert f"--socket {sock['ListenStream'][0]}" in s["ExecStart"][0]
