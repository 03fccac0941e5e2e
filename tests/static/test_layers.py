"""The layers of ``docs/architecture.md`` are the folders of the code, and each keeps its rules.

Read from the source (every ``import`` statement of every module, including those inside
functions), and for the sans-I/O core also by importing it in a fresh interpreter
(``tests/core/test_sans_io.py``):

- ``core/`` imports neither ``trio`` nor ``socket`` nor ``os``, nor any other module that
  talks to the OS, and of parrot-ipc only ``core``, ``errors`` and the store's interface.
- ``trio`` is imported only by ``shell/`` and the clients (``client/``).
- ``sqlite3`` is imported only by ``store/``: the store alone owns the journal.
- Linux calls (``socket``, ``fcntl``, ``pwd``, ``grp``, ``resource``, ``ctypes``, ``select``)
  are made only in ``os/``; the clients connect with ``socket`` themselves.
- Dependencies point down: ``core`` <- ``store`` <- ``shell`` <- ``app``; ``os`` knows only
  ``core``'s peer-credential type and ``errors``; ``client`` knows ``core.protocol``,
  ``errors`` and ``os``, never the broker's insides.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "parrot_ipc"
LAYERS = ("core", "store", "shell", "os", "app", "client")
OS_TALK = {"socket", "fcntl", "pwd", "grp", "resource", "ctypes", "select", "termios", "mmap"}

#: For each layer: which parrot-ipc layers it may import (besides itself and ``errors``).
MAY_IMPORT: dict[str, set[str]] = {
    "core": {"store"},  # the Store interface and MemoryStore (store.base, store.memory) only
    "store": {"core", "os"},
    "os": {"core"},
    "shell": {"core", "store", "os"},
    "app": {"core", "store", "shell", "os", "client"},
    "client": {"core", "os"},
}
#: Stdlib or third-party modules a layer may import beyond the common ones.
ALLOWED_OS_TALK: dict[str, set[str]] = {"os": OS_TALK, "client": {"socket"}}


def _modules(layer: str) -> list[Path]:
    return sorted((PKG / layer).rglob("*.py"))


def _type_only(tree: ast.Module) -> set[ast.AST]:
    """The import statements under ``if TYPE_CHECKING:``: they name types and run nothing."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            found.update(n for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Import | ast.ImportFrom))
    return found


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """(absolute dotted module, line) for every import in ``path`` that runs (type-only imports
    under ``if TYPE_CHECKING:`` are left out); parrot-ipc's own as ``parrot_ipc.x``."""
    # For a module and for __init__ alike, "." is its folder.
    package = list(path.relative_to(PKG.parent).parts[:-1]) if path.is_relative_to(PKG.parent) else []
    tree = ast.parse(path.read_text(), str(path))
    type_only = _type_only(tree)
    for node in ast.walk(tree):
        if node in type_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
                if node.module is None:  # from . import a, b
                    for alias in node.names:
                        yield f"{mod}.{alias.name}", node.lineno
                    continue
                yield mod, node.lineno
            else:
                yield node.module or "", node.lineno


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "parrot_ipc" or len(parts) < 2:
        return None
    return parts[1]


def test_every_layer_folder_exists_and_has_modules() -> None:
    for layer in LAYERS:
        assert _modules(layer), f"src/parrot_ipc/{layer}/ has no modules"
    top = {p.name for p in PKG.glob("*.py")}
    assert top <= {"__init__.py", "__main__.py", "errors.py", "py.typed"}, top


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = []
    for path in _modules(layer):
        for mod, line in _imports(path):
            other = _layer_of(mod)
            if other is None or other in (layer, "errors", "__version__"):
                continue
            if other not in MAY_IMPORT[layer]:
                wrong.append(f"{path.relative_to(PKG)}:{line} imports {mod}")
    assert wrong == [], "\n".join(wrong)


def test_core_imports_only_the_store_interface() -> None:
    wrong = [f"{p.relative_to(PKG)}:{line} imports {mod}" for p in _modules("core")
             for mod, line in _imports(p)
             if _layer_of(mod) == "store" and mod not in ("parrot_ipc.store", "parrot_ipc.store.base",
                                                          "parrot_ipc.store.memory")]
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("layer", LAYERS)
def test_only_the_os_layer_talks_to_the_os(layer: str) -> None:
    allowed = ALLOWED_OS_TALK.get(layer, set())
    wrong = [f"{p.relative_to(PKG)}:{line} imports {mod}" for p in _modules(layer)
             for mod, line in _imports(p)
             if mod.split(".")[0] in OS_TALK - allowed]
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("layer", [layer for layer in LAYERS if layer not in ("shell", "client")])
def test_only_shell_and_clients_import_trio(layer: str) -> None:
    wrong = [f"{p.relative_to(PKG)}:{line} imports {mod}" for p in _modules(layer)
             for mod, line in _imports(p) if mod.split(".")[0] in ("trio", "anyio")]
    assert wrong == [], "\n".join(wrong)


@pytest.mark.parametrize("layer", LAYERS)
def test_only_the_store_imports_sqlite3(layer: str) -> None:
    if layer == "store":
        assert any(mod == "sqlite3" for p in _modules("store") for mod, _ in _imports(p))
        return
    wrong = [f"{p.relative_to(PKG)}:{line}" for p in _modules(layer)
             for mod, line in _imports(p) if mod.split(".")[0] == "sqlite3"]
    assert wrong == [], "\n".join(wrong)


#: The one module allowed to import asyncio and nats (nats-py): the relay, a process of its own
#: (docs/federation.md), so the broker stays trio and the rest of the package stays free of a
#: second event loop.
ASYNCIO_MODULES = {"client/relay.py"}


@pytest.mark.parametrize("layer", LAYERS)
def test_only_the_relay_imports_asyncio_and_nats(layer: str) -> None:
    wrong = [f"{p.relative_to(PKG)}:{line} imports {mod}" for p in _modules(layer)
             for mod, line in _imports(p)
             if mod.split(".")[0] in ("asyncio", "nats") and str(p.relative_to(PKG)) not in ASYNCIO_MODULES]
    if layer == "client":
        assert any(mod.split(".")[0] == "nats" for mod, _ in _imports(PKG / "client" / "relay.py"))
    assert wrong == [], "\n".join(wrong)


def test_core_imports_no_os() -> None:
    # Time and randomness are injected (Broker(clock=..., token_bytes=...)); the one default
    # the core keeps is secrets.token_bytes, so a Broker built without it still makes
    # unguessable tokens.
    wrong = [f"{p.relative_to(PKG)}:{line} imports {mod}" for p in _modules("core")
             for mod, line in _imports(p)
             if mod.split(".")[0] in {"os", "socket", "trio", "sqlite3", "subprocess", "signal", "threading",
                                      "pathlib", "shutil", "time", "random"}]
    assert wrong == [], "\n".join(wrong)


def test_the_import_scan_sees_relative_imports_and_skips_type_only_ones(tmp_path: Path) -> None:
    found = {mod for mod, _ in _imports(PKG / "shell" / "server.py")}
    assert any(m.startswith("parrot_ipc.core") for m in found), found
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nimport fcntl\nif TYPE_CHECKING:\n    import socket\n")
    assert {mod for mod, _ in _imports(probe)} == {"typing", "fcntl"}
