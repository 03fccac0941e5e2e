"""tests/system: the real-systemd test prints its transcript (each check and its evidence) in
the terminal summary, pass or fail."""

from __future__ import annotations

import pytest
from nspawn_box import TRANSCRIPTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for t in TRANSCRIPTS:
        terminalreporter.section("real systemd: transcript")
        for line in t.lines:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"(also in {t.path})")
