"""The store's import closure: ``parrot_ipc.store`` (what the core imports) loads no I/O module
and no other layer, and every store module imports on its own in a fresh interpreter (the core
imports the store, so the store must not need the core at import time)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_LOADED = "import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"


def _loaded_by(module: str) -> set[str]:
    res = subprocess.run([sys.executable, "-I", "-c", _LOADED.format(module=module)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout))


def test_the_store_package_loads_no_io_module_and_no_other_layer() -> None:
    loaded = _loaded_by("parrot_ipc.store")
    for name in ("sqlite3", "socket", "trio", "fcntl", "parrot_ipc.os", "parrot_ipc.shell",
                 "parrot_ipc.store.sqlite", "parrot_ipc.core"):
        assert name not in loaded, name


@pytest.mark.parametrize("module", ["parrot_ipc.store", "parrot_ipc.store.sqlite", "parrot_ipc.store.schema",
                                    "parrot_ipc.store.ops", "parrot_ipc.store.memory"])
def test_each_store_module_imports_first(module: str) -> None:
    assert module in _loaded_by(module)
