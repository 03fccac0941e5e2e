"""``parrot-ipc setup claude|gemini``: write the parrot MCP server and the parrot-ipc hooks into
an agent's settings files, merging with what is there.

Files (Claude Code settings and MCP docs, code.claude.com/docs/en/settings and /en/mcp; Gemini
CLI configuration, geminicli.com/docs/get-started/configuration and /docs/hooks/reference):

=======  =====================================  ==================================
tool     ``--scope user``                       ``--scope project`` (the cwd)
=======  =====================================  ==================================
claude   ``~/.claude.json`` (``mcpServers``)     ``.mcp.json`` (``mcpServers``)
         ``~/.claude/settings.json`` (hooks)    ``.claude/settings.json`` (hooks)
gemini   ``~/.gemini/settings.json`` (both)     ``.gemini/settings.json`` (both)
=======  =====================================  ==================================

Rules: only the server named :data:`SERVER_NAME` and hook entries whose command is this
program's ``hook`` command are ours; every other key, server and hook is kept as it was.
Running it twice changes nothing. ``--dry-run`` prints a unified diff and writes nothing;
``--remove`` deletes exactly what is ours (and any hook group or event left empty by that).

Instance names: ``--instance`` if given; else, for a project, ``<tool>-<dir>-<hash4>`` (see
:func:`default_instance`), stable per (tool, project directory); for the user scope the bridge
is started with ``--instance-auto <tool>`` and computes the same name from its own cwd, so each
project keeps its own name across restarts.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from typing import Any, Final

from ..errors import SetupError
from ..os.files import lstat_or_none, make_dirs, write_atomic
from ..os.host import exists, read_text

SERVER_NAME: Final = "parrot"
#: Hook events, per tool, with the matcher used (None: the event takes none).
HOOK_EVENTS: Final[dict[str, dict[str, str | None]]] = {
    "claude": {"SessionStart": None, "UserPromptSubmit": None, "PostToolUse": "*", "Stop": None},
    "gemini": {"SessionStart": "*", "BeforeAgent": "*", "AfterTool": "*"},
}
#: Hook timeouts: Claude Code counts seconds, Gemini CLI milliseconds (their hooks references).
HOOK_TIMEOUT: Final = {"claude": 5, "gemini": 5000}

__all__ = ["SERVER_NAME", "SetupError", "default_instance", "plan", "run_setup"]


def default_instance(tool: str, directory: str) -> str:
    """``<tool>-<dir name>-<4 hex of SHA-256 of the absolute path>``: stable per (tool, project
    directory), two projects of one name do not collide, and it matches the instance id pattern
    (other characters become ``-``; at most 64 characters)."""
    path = os.path.abspath(directory)
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", os.path.basename(path.rstrip("/")) or "root").strip("-.") or "root"
    digest = hashlib.sha256(path.encode()).hexdigest()[:4]
    return f"{tool}-{base[:64 - len(tool) - 6]}-{digest}"


def _program() -> list[str]:
    """How to run this parrot-ipc: the ``parrot-ipc`` on PATH, else this Python with ``-m``."""
    found = shutil.which("parrot-ipc")
    return [found] if found else [sys.executable, "-m", "parrot_ipc"]


def _files(tool: str, scope: str, home: str, cwd: str) -> tuple[str, str]:
    """``(server file, hooks file)`` for ``tool`` and ``scope`` (see the module's table)."""
    if tool == "gemini":
        path = os.path.join(home if scope == "user" else cwd, ".gemini", "settings.json")
        return path, path
    if scope == "user":
        return os.path.join(home, ".claude.json"), os.path.join(home, ".claude", "settings.json")
    return os.path.join(cwd, ".mcp.json"), os.path.join(cwd, ".claude", "settings.json")


def _load(path: str) -> dict[str, Any]:
    """The JSON object in ``path`` ({} if there is none). Raises :class:`SetupError`."""
    if not exists(path):
        return {}
    try:
        doc = json.loads(read_text(path, 16 << 20) or "{}")
    except (OSError, ValueError) as exc:
        raise SetupError(f"{path} is not readable JSON ({exc}); fix or move it, then run setup again") from None
    if not isinstance(doc, dict):
        raise SetupError(f"{path} does not hold a JSON object; fix or move it, then run setup again")
    return doc


def _section(doc: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    """``doc[key]`` as a dict (created if missing). Raises :class:`SetupError` if not an object."""
    value = doc.setdefault(key, {})
    if not isinstance(value, dict):
        raise SetupError(f"{path}: '{key}' is not a JSON object; fix it, then run setup again")
    return value


def _is_ours(hook: Any, command: str) -> bool:
    return isinstance(hook, dict) and hook.get("command") == command


def _merge_hooks(doc: dict[str, Any], tool: str, command: str, remove: bool, path: str) -> None:
    """Add (or with ``remove`` take out) our hook for each event of ``tool`` in ``doc["hooks"]``."""
    hooks = _section(doc, "hooks", path)
    for event, matcher in HOOK_EVENTS[tool].items():
        groups = hooks.get(event, [])
        if not isinstance(groups, list):
            raise SetupError(f"{path}: hooks.{event} is not a list; fix it, then run setup again")
        for g in groups:
            if isinstance(g, dict) and isinstance(g.get("hooks"), list):
                g["hooks"] = [h for h in g["hooks"] if not _is_ours(h, command)] if remove else g["hooks"]
        groups = [g for g in groups if not (isinstance(g, dict) and g.get("hooks") == [])]
        present = any(isinstance(g, dict) and any(_is_ours(h, command) for h in g.get("hooks") or [])
                      for g in groups)
        if not remove and not present:
            entry: dict[str, Any] = {"type": "command", "command": command, "timeout": HOOK_TIMEOUT[tool]}
            if tool == "gemini":
                entry["name"] = "parrot-ipc"
            group: dict[str, Any] = {"hooks": [entry]}
            if matcher is not None:
                group = {"matcher": matcher, **group}
            groups.append(group)
        if groups:
            hooks[event] = groups
        else:
            hooks.pop(event, None)
    if not hooks:
        doc.pop("hooks")


def _merge_server(doc: dict[str, Any], server: dict[str, Any], remove: bool, path: str) -> None:
    """Put (or with ``remove`` delete) ``mcpServers.parrot`` in ``doc``."""
    servers = _section(doc, "mcpServers", path)
    if remove:
        servers.pop(SERVER_NAME, None)
        if not servers:
            doc.pop("mcpServers")
    else:
        servers[SERVER_NAME] = server


def plan(tool: str, scope: str, instance: str | None, *, remove: bool, home: str, cwd: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """``{path: (before, after)}`` for every settings file setup touches. Reads only.
    Raises :class:`SetupError` for a file it cannot merge."""
    prog = _program()
    if instance is not None:
        args = ["mcp", "--instance", instance]
    elif scope == "project":
        args = ["mcp", "--instance", default_instance(tool, cwd)]
    else:
        args = ["mcp", "--instance-auto", tool]
    server = {"command": prog[0], "args": prog[1:] + args}
    if tool == "claude":
        server = {"type": "stdio", **server}
    command = shlex.join([*prog, "hook", tool])
    server_file, hooks_file = _files(tool, scope, home, cwd)
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for path in dict.fromkeys([server_file, hooks_file]):
        before = _load(path)
        after = copy.deepcopy(before)
        if path == server_file:
            _merge_server(after, server, remove, path)
        if path == hooks_file:
            _merge_hooks(after, tool, command, remove, path)
        out[path] = (before, after)
    return out


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def run_setup(tool: str, scope: str, instance: str | None, *, dry_run: bool = False, remove: bool = False,
              home: str | None = None, cwd: str | None = None) -> str:
    """Apply (or with ``dry_run`` only show) :func:`plan`; returns the unified diff, or a line
    saying nothing changes. A file whose content would not change is not rewritten.
    Raises :class:`SetupError`; OSError if a file cannot be written."""
    home = home or os.path.expanduser("~")
    cwd = cwd or os.path.abspath(".")
    diffs = []
    for path, (before, after) in plan(tool, scope, instance, remove=remove, home=home, cwd=cwd).items():
        if before == after:
            continue
        old = _dump(before) if exists(path) else ""
        diffs.append("".join(difflib.unified_diff(old.splitlines(True), _dump(after).splitlines(True),
                                                  f"{path} (now)", f"{path} (after setup)")))
        if not dry_run:
            st = lstat_or_none(path)
            make_dirs(os.path.dirname(path))
            write_atomic(path, _dump(after).encode(), mode=0o600 if st is None else st.st_mode & 0o777)
    if not diffs:
        return f"parrot-ipc setup {tool}: nothing to change."
    return "".join(diffs) + ("(dry run: nothing written)" if dry_run else "")
