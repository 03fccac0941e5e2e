"""docs/security.md names real tests: every `tests/...py::name` it cites exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_CITE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_cited_in_security_md_exists() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    cited = 0
    for line in text.splitlines():
        current: Path | None = None
        for m in _CITE.finditer(line):
            file, name, bare = m.groups()
            if file:
                current = ROOT / file
                assert current.exists(), f"{file} cited in docs/security.md does not exist"
            target = name or bare
            if target:
                assert current is not None, f"::{target} cited without a file in: {line}"
                assert target in _test_names(current), f"{current.name}::{target} does not exist"
                cited += 1
    assert cited >= 20
