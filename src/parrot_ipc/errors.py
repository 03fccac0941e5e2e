"""parrot-ipc's exceptions."""

from __future__ import annotations


class StartupError(Exception):
    """The broker must not start. ``str(exc)`` is one line for the operator: path and cause."""
