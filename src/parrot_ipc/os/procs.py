"""The process tree as Linux shows it in ``/proc`` (proc(5)), and where a bridge's hook socket
lives: what ``parrot-ipc hook`` needs to find the bridge of its own agent session.

The rule (``docs/protocol.md``, "Hooks: finding the bridge"): an agent (Claude Code, Gemini CLI)
starts both its MCP bridge and its hook commands as descendants of one agent process. The
bridge listens on :func:`hook_socket_path` of its parent's pid; a hook walks its own ancestors
(:func:`ancestors`) and connects to the first such socket that exists; the bridge admits a
peer only if SO_PEERCRED says it has the bridge's uid and :func:`descends_from` the bridge's
parent. No token file is involved.
"""

from __future__ import annotations

import os
from typing import Final

#: How many ancestors a hook looks through at most (a loop guard against a strange tree).
MAX_DEPTH: Final = 32


def parent_pid(pid: int) -> int | None:
    """Field 4 (ppid) of ``/proc/<pid>/stat`` (proc(5)); None if the process is gone or the
    line is malformed. pid 1 and kernel threads answer 0."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
        return int(line[line.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def ancestors(pid: int) -> list[int]:
    """The pids above ``pid``, nearest first, stopping before pid 0 (at most :data:`MAX_DEPTH`)."""
    out: list[int] = []
    cur: int | None = pid
    while len(out) < MAX_DEPTH:
        cur = parent_pid(cur) if cur is not None else None
        if not cur:
            break
        out.append(cur)
    return out


def descends_from(pid: int, root: int) -> bool:
    """True if process ``root`` is a strict ancestor of process ``pid`` (``/proc``)."""
    return root in ancestors(pid)


def hooks_dir(euid: int | None = None, env: dict[str, str] | None = None) -> str:
    """The directory of hook sockets: ``$XDG_RUNTIME_DIR/parrot-ipc-hooks`` (a per-user 0700
    tmpfs directory, XDG Base Directory spec), else ``/tmp/parrot-ipc-hooks-<euid>``. The
    bridge creates it 0700 and refuses one that is not its own
    (:func:`parrot_ipc.os.paths.ensure_runtime_dir`)."""
    env = dict(os.environ) if env is None else env
    euid = os.geteuid() if euid is None else euid
    base = env.get("XDG_RUNTIME_DIR")
    return os.path.join(base, "parrot-ipc-hooks") if base else f"/tmp/parrot-ipc-hooks-{euid}"


def hook_socket_path(agent_pid: int, directory: str | None = None) -> str:
    """The socket a bridge whose parent is ``agent_pid`` serves its hooks on."""
    return os.path.join(directory or hooks_dir(), f"agent-{agent_pid}.sock")
