"""Shared by the agent-integration tests (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A 0700 directory used as the agent's HOME, cwd and XDG_RUNTIME_DIR."""
    w = tmp_path / "w"
    w.mkdir(mode=0o700)
    return w
