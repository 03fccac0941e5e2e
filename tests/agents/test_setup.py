"""``parrot-ipc setup claude|gemini`` on a home directory that already has settings: the merge
keeps every other entry, a second run changes nothing, ``--dry-run`` writes nothing, and
``--remove`` gives back the files as they were (as JSON values)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from parrot_ipc.app.setup import default_instance

CLAUDE_JSON = {"numStartups": 7, "mcpServers": {"other": {"command": "other-server", "args": ["--x"]}},
               "projects": {"/p": {"allowedTools": []}}}
CLAUDE_SETTINGS = {"model": "opus", "permissions": {"allow": ["Bash(ls)"]},
                   "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
                             "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "audit"}]}]}}
GEMINI_SETTINGS = {"theme": "Dracula", "mcpServers": {"fs": {"command": "fs-server"}},
                   "hooks": {"AfterTool": [{"matcher": "write_file", "hooks": [{"type": "command", "command": "fmt"}]}]}}


def _setup(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARROT_")} | {"HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "parrot_ipc", "setup", *args], capture_output=True, text=True,
                          env=env, cwd=str(cwd), timeout=60)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / ".claude").mkdir(parents=True)
    (h / ".gemini").mkdir()
    (h / ".claude.json").write_text(json.dumps(CLAUDE_JSON))
    (h / ".claude" / "settings.json").write_text(json.dumps(CLAUDE_SETTINGS))
    (h / ".gemini" / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    return h


def _json(p: Path) -> Any:
    return json.loads(p.read_text())


def _ours(doc: dict[str, Any]) -> list[str]:
    return [h["command"] for groups in doc.get("hooks", {}).values() for g in groups for h in g["hooks"]
            if " hook " in h["command"]]


@pytest.mark.parametrize("tool", ["claude", "gemini"])
def test_dry_run_changes_nothing_and_shows_the_diff(home: Path, tmp_path: Path, tool: str) -> None:
    before = _snapshot(home)
    res = _setup(home, tmp_path, tool, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "+    \"parrot\": {" in res.stdout and f"hook {tool}" in res.stdout and "dry run" in res.stdout
    assert _snapshot(home) == before


def test_claude_user_scope_merges_is_idempotent_and_removes(home: Path, tmp_path: Path) -> None:
    assert _setup(home, tmp_path, "claude").returncode == 0
    cj, st = _json(home / ".claude.json"), _json(home / ".claude" / "settings.json")
    assert cj["numStartups"] == 7 and cj["projects"] == CLAUDE_JSON["projects"]
    assert cj["mcpServers"]["other"] == CLAUDE_JSON["mcpServers"]["other"]
    assert cj["mcpServers"]["parrot"]["args"][-3:] == ["mcp", "--instance-auto", "claude"]
    assert st["model"] == "opus" and st["permissions"] == CLAUDE_SETTINGS["permissions"]
    assert st["hooks"]["PreToolUse"] == CLAUDE_SETTINGS["hooks"]["PreToolUse"]
    assert st["hooks"]["Stop"][0] == CLAUDE_SETTINGS["hooks"]["Stop"][0]  # the user's Stop hook stays
    assert set(st["hooks"]) == {"Stop", "PreToolUse", "SessionStart", "UserPromptSubmit", "PostToolUse"}
    assert len(_ours(st)) == 4
    once = _snapshot(home)
    again = _setup(home, tmp_path, "claude")
    assert again.returncode == 0 and "nothing to change" in again.stdout
    assert _snapshot(home) == once
    assert _setup(home, tmp_path, "claude", "--remove").returncode == 0
    assert _json(home / ".claude.json") == CLAUDE_JSON
    assert _json(home / ".claude" / "settings.json") == CLAUDE_SETTINGS


def test_gemini_user_scope_merges_and_removes(home: Path, tmp_path: Path) -> None:
    assert _setup(home, tmp_path, "gemini", "--instance", "gem-main").returncode == 0
    g = _json(home / ".gemini" / "settings.json")
    assert g["theme"] == "Dracula" and g["mcpServers"]["fs"] == {"command": "fs-server"}
    assert g["mcpServers"]["parrot"]["args"][-3:] == ["mcp", "--instance", "gem-main"]
    assert g["hooks"]["AfterTool"][0] == GEMINI_SETTINGS["hooks"]["AfterTool"][0]
    assert {e for e in g["hooks"]} == {"SessionStart", "BeforeAgent", "AfterTool"}
    assert all(h.get("timeout") == 5000 for h in g["hooks"]["BeforeAgent"][0]["hooks"])  # Gemini: ms
    assert _setup(home, tmp_path, "gemini", "--remove").returncode == 0
    assert _json(home / ".gemini" / "settings.json") == GEMINI_SETTINGS


def test_project_scope_writes_the_project_files_with_a_stable_name(home: Path, tmp_path: Path) -> None:
    proj = tmp_path / "my proj"
    proj.mkdir()
    assert _setup(home, proj, "claude", "--scope", "project").returncode == 0
    name = _json(proj / ".mcp.json")["mcpServers"]["parrot"]["args"][-1]
    assert name == default_instance("claude", str(proj)) and name.startswith("claude-my-proj-")
    assert len(_ours(_json(proj / ".claude" / "settings.json"))) == 4
    other = tmp_path / "elsewhere" / "my proj"
    other.mkdir(parents=True)
    assert default_instance("claude", str(other)) != name  # two projects of one name don't collide
    assert default_instance("claude", str(proj)) == name  # stable
    assert _setup(home, proj, "claude", "--scope", "project", "--remove").returncode == 0
    assert _json(proj / ".mcp.json") == {} and _json(proj / ".claude" / "settings.json") == {}


def test_a_settings_file_that_is_not_json_is_a_clear_error_and_nothing_is_written(home: Path, tmp_path: Path) -> None:
    (home / ".claude" / "settings.json").write_text("{not json")
    before = _snapshot(home)
    res = _setup(home, tmp_path, "claude")
    assert res.returncode == 2 and "settings.json is not readable JSON" in res.stderr and "Traceback" not in res.stderr
    assert _snapshot(home) == before
