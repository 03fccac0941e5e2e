"""docs/operations.md shows the install scripts that tests/system/test_real_systemd.py runs, byte
for byte, so the steps an operator reads are the steps the real-systemd test proves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def sh_blocks(doc: str) -> list[str]:
    """The bodies of the ```sh fenced blocks of ``doc``, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", doc, flags=re.S | re.M)


@pytest.mark.parametrize("script", ["deploy/install-system.sh", "deploy/install-user.sh"])
def test_docs_show_the_install_scripts(script: str) -> None:
    text = (REPO / script).read_text()
    assert text in sh_blocks((REPO / "docs" / "operations.md").read_text()), (
        f"docs/operations.md no longer shows {script} as one ```sh block: paste the script there")
    assert f"sh {script}" in text, f"{script} should say how to run it"


def test_docs_audit_pipeline_reads_lines_as_strings() -> None:
    """journalctl -o cat mixes systemd's own lines in: jq must read raw lines and skip non-JSON."""
    doc = (REPO / "docs" / "operations.md").read_text()
    jq = [line for block in sh_blocks(doc) for line in block.splitlines() if "| jq " in line]
    assert jq and all("jq -cR 'fromjson? |" in line for line in jq), jq
