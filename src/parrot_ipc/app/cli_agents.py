"""The agent-integration commands: ``parrot-ipc hook`` and ``parrot-ipc setup`` (issue 15).

Registered on the main app by :mod:`parrot_ipc.app.cli`; the work is done in
:mod:`parrot_ipc.app.hook` and :mod:`parrot_ipc.app.setup`.
"""

from __future__ import annotations

import enum
from typing import Annotated, Optional

import typer

from ..errors import EXIT_USAGE


class AgentTool(enum.StrEnum):
    """The agents parrot-ipc integrates with."""

    claude = "claude"
    gemini = "gemini"


def hook(tool: Annotated[AgentTool, typer.Argument(help="The agent running this hook: claude or gemini.")]) -> None:
    """Run as an agent hook: read the event JSON on stdin, print what the agent expects.

    Shows new parrot-ipc mail to the model (SessionStart, UserPromptSubmit/BeforeAgent,
    PostToolUse/AfterTool, Stop). Acts as the instance of this session's 'parrot-ipc mcp'
    bridge. Never fails the agent: on any error it prints nothing and exits 0 (errors are
    logged to hook.log in the hooks directory). Written into settings by 'parrot-ipc setup'.
    """
    from .hook import main

    raise typer.Exit(main("claude" if tool is AgentTool.claude else "gemini"))


class Scope(enum.StrEnum):
    """Where ``setup`` writes: the user's settings, or this project's."""

    user = "user"
    project = "project"


def setup(
    tool: Annotated[AgentTool, typer.Argument(help="The agent to set up: claude or gemini.")],
    scope: Annotated[Scope, typer.Option(help="user: your home's settings; project: this directory's.")] = Scope.user,
    instance: Annotated[Optional[str], typer.Option(help="Instance id (default: <tool>-<this directory's name>).")] = None,  # noqa: UP045
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff; change nothing.")] = False,
    remove: Annotated[bool, typer.Option("--remove", help="Undo what setup wrote.")] = False,
) -> None:
    """Write the parrot MCP server and the parrot-ipc hooks into the agent's settings.

    Claude Code: ~/.claude.json (user) or .mcp.json (project) for the server, and
    ~/.claude/settings.json or .claude/settings.json for the hooks. Gemini CLI:
    ~/.gemini/settings.json or .gemini/settings.json. Merges with what is there, never drops
    other entries; running it twice changes nothing; --remove undoes it.
    """
    from .setup import SetupError, run_setup

    try:
        text = run_setup(tool.value, scope.value, instance, dry_run=dry_run, remove=remove)
    except SetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if text:
        typer.echo(text)
