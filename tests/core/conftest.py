"""Fixtures for the sans-I/O core tests (the harness itself is in ``core_harness.py``)."""

from __future__ import annotations

import pytest
from core_harness import Harness


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture(scope="session")
def make_harness() -> type[Harness]:
    """The :class:`Harness` class, for tests that need a custom config, policy or a fresh broker."""
    return Harness
