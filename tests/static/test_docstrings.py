"""Every public definition in ``parrot_ipc`` and its subpackages has a docstring.

Public: a module, or a class, function or method whose name does not start with ``_``, defined
at module level or in a public class (dunder methods other than ``__init__`` are skipped;
``__init__`` is covered by its class's docstring). The count must stay at zero.

Run as a script to list what is missing under some folders:
``python tests/static/test_docstrings.py src/parrot_ipc/store``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "parrot_ipc"


def _defs(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.AST]]:
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("_"):
                continue
            yield f"{prefix}{node.name}", node
            if isinstance(node, ast.ClassDef):
                yield from _defs(node.body, f"{prefix}{node.name}.")


def public_definitions(root: Path = SRC) -> Iterator[tuple[str, bool]]:
    """(qualified place, has a docstring) for every public definition under ``root``."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(SRC.parent)
        tree = ast.parse(path.read_text(), str(path))
        yield f"{rel}", ast.get_docstring(tree) is not None
        for name, node in _defs(tree.body, ""):
            assert isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            yield f"{rel}:{node.lineno} {name}", ast.get_docstring(node) is not None


def test_public_definitions_are_counted() -> None:
    found = dict(public_definitions())
    assert len(found) > 200  # the scan really walks the package (every subpackage)
    assert any(place.startswith("parrot_ipc/core/") for place in found)
    assert any(place.startswith("parrot_ipc/shell/") for place in found)


def test_every_public_definition_has_a_docstring() -> None:
    missing = [place for place, ok in public_definitions() if not ok]
    assert missing == [], f"{len(missing)} public definitions without a docstring:\n" + "\n".join(missing)


if __name__ == "__main__":
    roots = [Path(a).resolve() for a in sys.argv[1:]] or [SRC]
    total = 0
    for r in roots:
        for place, ok in public_definitions(r):
            if not ok:
                total += 1
                print(place)
    print(f"{total} missing", file=sys.stderr)
