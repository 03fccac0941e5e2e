"""Fixtures for the deployment tests: host tools (systemd-analyze, apparmor_parser, ...).

A missing tool skips the test with the reason and the apt package that provides it, except
under CI (``$CI`` set): ``.ci/run`` installs them, so there a missing tool is a failure,
like the root marker in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Tool -> the Debian package that provides it (dpkg -S).
PACKAGES = {
    "systemd-analyze": "systemd",
    "systemd-socket-activate": "systemd",
    "systemd-sysusers": "systemd",
    "apparmor_parser": "apparmor",
    "/usr/share/apparmor-features/features": "apparmor",
}


def _missing(what: str) -> None:
    reason = f"{what} is not available (apt-get install -y {PACKAGES.get(what, '?')})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI (CI={os.environ['CI']!r}) must run the deployment tests", pytrace=False)
    pytest.skip(reason)


def find_tool(name: str) -> str:
    """The path of a host tool (also looked up in /usr/sbin and /sbin); skip or fail if absent."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        _missing(name)
    assert path is not None
    return path


def find_file(path: str) -> str:
    """``path`` if it exists; skip or fail (CI) otherwise."""
    if not os.path.exists(path):
        _missing(path)
    return path


@pytest.fixture
def tool() -> Callable[[str], str]:
    """``tool(name)`` -> its path; a missing tool skips (locally) or fails (CI)."""
    return find_tool


@pytest.fixture
def host_file() -> Callable[[str], str]:
    """``host_file(path)`` -> path; a missing file skips (locally) or fails (CI)."""
    return find_file
