"""The real ``claude mcp list`` and ``gemini mcp list`` against a ``parrot-ipc setup``-written
config: each must report the ``parrot`` server Connected, and a live bridge of the same instance
must keep working during and after the check.

The two npm packages (@anthropic-ai/claude-code, @google/gemini-cli) are installed once into
``~/.cache/parrot-ipc-tests/npm`` with ``npm install --prefix``; the test is skipped, with the
reason, only if npm is missing or the install fails. Neither listing needs a login or the
network here (verified 2026-12-01: claude 2.1.332, gemini 0.61.0). Gemini CLI hides servers in
an untrusted folder, so the test trusts the project in ``~/.gemini/trustedFolders.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mcp_types as types
import pytest
import trio

from parrot_ipc.app.setup import default_instance

from .test_channel import bridge

NPM_DIR = Path.home() / ".cache" / "parrot-ipc-tests" / "npm"
PACKAGES = {"claude": "@anthropic-ai/claude-code", "gemini": "@google/gemini-cli"}


def _tool(name: str) -> Path:
    exe = NPM_DIR / "node_modules" / ".bin" / name
    if exe.exists():
        return exe
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed, so the real clients cannot be installed")
    try:
        res = subprocess.run(["npm", "install", "--prefix", str(NPM_DIR), PACKAGES[name]], capture_output=True,
                             text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {PACKAGES[name]} took over 300 s (no registry reachable?)")
    if res.returncode != 0 or not exe.exists():
        pytest.skip(f"npm install {PACKAGES[name]} failed: {res.stderr.strip()[-300:]}")
    return exe


async def _check(broker, tmp_path: Path, name: str) -> None:
    exe = _tool(name)
    b = broker()
    home, proj = tmp_path / "home", tmp_path / "proj"
    home.mkdir()
    proj.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARROT_")}
    env |= {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path), "PARROT_IPC_DIR": os.path.dirname(b.socket_path)}
    setup = subprocess.run([sys.executable, "-m", "parrot_ipc", "setup", name],
                           cwd=proj, env=env, capture_output=True, text=True, timeout=60)
    assert setup.returncode == 0, setup.stderr
    if name == "gemini":
        (home / ".gemini" / "trustedFolders.json").write_text(json.dumps({str(proj): "TRUST_FOLDER"}))
    instance = default_instance(name, str(proj))
    async with bridge(proj, b.socket_path, instance, rate=None) as (session, _tap, _init):
        before = await session.call_tool("whoami", {})
        assert not before.is_error
        res = await trio.to_thread.run_sync(lambda: subprocess.run(
            [str(exe), "mcp", "list"], cwd=proj, env=env, capture_output=True, text=True, timeout=120))
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        line = next(x for x in out.splitlines() if x.lstrip("✓○✔✗ ").startswith("parrot"))
        assert "Connected" in line and f"--instance-auto {name}" in line
        after = await session.call_tool("whoami", {})
        block = after.content[0]
        assert not after.is_error and isinstance(block, types.TextContent) and instance in block.text, block


@pytest.mark.parametrize("name", ["claude", "gemini"])
async def test_real_mcp_list_reports_the_server_connected_and_a_live_bridge_keeps_working(
        broker, tmp_path: Path, name: str) -> None:
    """The health check's own bridge only initializes (no claim: ``docs/protocol.md``, "Sessions
    of one owner"), so the live bridge of that instance keeps its session."""
    await _check(broker, tmp_path, name)
