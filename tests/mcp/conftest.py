"""Shared by the MCP and resource tests: a resources dir and the config that serves it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def _write_resources(where: Path, instructions: str, peers_toml: str = "") -> tuple[Path, Path]:
    """``where/resources/instructions`` (dir 0755, file 0644, as the reader demands) and
    ``where/config.toml`` (0644) whose ``[server]`` serves it, then ``peers_toml``.
    Returns ``(config, resources_dir)``."""
    res = where / "resources"
    res.mkdir(mode=0o755)
    res.chmod(0o755)
    (res / "instructions").write_text(instructions)
    (res / "instructions").chmod(0o644)
    cfg = where / "config.toml"
    cfg.write_text(f'[server]\nresources_dir = "{res}"\n' + (f"\n{peers_toml}" if peers_toml else ""))
    cfg.chmod(0o644)
    return cfg, res


@pytest.fixture
def write_resources() -> Callable[..., tuple[Path, Path]]:
    """``write_resources(where, instructions, peers_toml="") -> (config, resources_dir)``."""
    return _write_resources
