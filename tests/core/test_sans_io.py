"""The core is sans-I/O: it imports neither ``trio`` nor ``socket`` and makes no OS calls.

Checked two ways: by importing it in a fresh interpreter and looking at ``sys.modules``, and
by reading its source.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
CORE = SRC / "parrot_ipc" / "core"
CORE_FILES = sorted(CORE.glob("*.py"))
FORBIDDEN_MODULES = ("trio", "socket")

# Imports the core package and every one of its submodules, then reports what got loaded.
_IMPORT_ALL = """
import importlib, json, pkgutil, sys
{prelude}
import parrot_ipc.core as core
names = [m.name for m in pkgutil.iter_modules(core.__path__)]
for name in names:
    importlib.import_module("parrot_ipc.core." + name)
print(json.dumps({{"submodules": names, "modules": sorted(sys.modules)}}))
"""

# Stands in for ``parrot_ipc/__init__.py`` so that only the core's own import closure is
# loaded: the top-level package re-exports the client, which is allowed to use trio and socket.
_SKIP_PARENT_INIT = f"""
import types
pkg = types.ModuleType("parrot_ipc")
pkg.__path__ = [{str(SRC / "parrot_ipc")!r}]
sys.modules["parrot_ipc"] = pkg
"""


def _import_in_fresh_interpreter(prelude: str) -> dict[str, list[str]]:
    code = _IMPORT_ALL.format(prelude=prelude)
    res = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(SRC)!r})\n{code}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    result: dict[str, list[str]] = json.loads(res.stdout)
    return result


def test_core_files_are_found() -> None:
    names = {p.stem for p in CORE_FILES}
    assert {
        "broker", "config", "connection", "delivery", "effects", "framing", "limits", "methods",
        "policy", "protocol", "schema", "sessions", "timefmt",
    } <= names


def test_the_cores_own_imports_pull_in_neither_trio_nor_socket() -> None:
    result = _import_in_fresh_interpreter(_SKIP_PARENT_INIT)
    assert set(result["submodules"]) == {p.stem for p in CORE_FILES if p.stem != "__init__"}
    assert "parrot_ipc.core.broker" in result["modules"]
    loaded = set(result["modules"])
    assert not loaded & set(FORBIDDEN_MODULES), sorted(loaded & set(FORBIDDEN_MODULES))
    assert not any(m.startswith("trio.") for m in loaded)


def test_importing_parrot_ipc_core_pulls_in_no_trio() -> None:
    loaded = set(_import_in_fresh_interpreter("")["modules"])
    assert not {m for m in loaded if m == "trio" or m.startswith("trio.")}


def test_importing_parrot_ipc_core_pulls_in_neither_trio_nor_socket() -> None:
    loaded = set(_import_in_fresh_interpreter("")["modules"])
    assert not loaded & set(FORBIDDEN_MODULES), sorted(loaded & set(FORBIDDEN_MODULES))


def _imported_modules(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            out.add("<dynamic __import__>")
    return out


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_source_imports_no_io_modules(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = {name.split(".")[0] for name in _imported_modules(tree)}
    bad = roots & {"trio", "socket", "os", "io", "pathlib", "subprocess", "select", "selectors", "importlib"}
    assert not bad, f"{path.name} imports {sorted(bad)}"
    assert "<dynamic __import__>" not in _imported_modules(tree)


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_core_source_has_no_open_calls_or_io_imports_in_text(path: Path) -> None:
    text = path.read_text()
    for needle in ("import trio", "import socket", "import os", "open("):
        assert needle not in text, f"{path.name} contains {needle!r}"
    calls = {
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
    }
    assert not calls & {"open", "fdopen", "socket", "system", "popen", "exec", "eval"}, path.name


def test_static_check_would_catch_a_forbidden_import() -> None:
    """The checker above is not vacuous."""
    assert _imported_modules(ast.parse("import os.path\nfrom socket import AF_UNIX\n")) == {"os.path", "socket"}
