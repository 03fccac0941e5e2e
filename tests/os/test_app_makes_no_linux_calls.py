"""Only ``os/`` makes Linux calls: the app modules that handle files (config_file, session_file,
doctor) reach the system only through :mod:`parrot_ipc.os` (files, users, host, paths).

Allowed there: reading ``os.environ``, ``os.path`` string work, and ``os.stat_result`` as a
type. Not allowed: importing pwd, grp, socket, stat, fcntl or ctypes; any other ``os.*``
function (stat, lstat, open, access, geteuid, unlink, ...); ``open()``; and ``pathlib`` calls
that touch the filesystem (``Path.exists``, ``.stat``, ``.read_text``, ``.unlink``, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "src" / "parrot_ipc" / "app"
MODULES = ("config_file.py", "session_file.py", "doctor.py")
BANNED_IMPORTS = {"pwd", "grp", "socket", "stat", "fcntl", "ctypes"}
ALLOWED_OS = {"environ", "stat_result", "fspath", "PathLike"}
ALLOWED_OS_PATH = {"join", "dirname", "basename", "abspath", "expanduser", "split", "splitext"}
FILESYSTEM_METHODS = {"exists", "is_file", "is_dir", "is_symlink", "stat", "lstat", "open", "read_text",
                      "read_bytes", "write_text", "write_bytes", "unlink", "mkdir", "chmod", "chown",
                      "iterdir", "touch", "rename", "replace", "resolve", "samefile"}


def _import_violations(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [f"import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_IMPORTS]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in BANNED_IMPORTS:
        return [f"from {node.module} import ..."]
    return []


def _attribute_violations(node: ast.Attribute) -> list[str]:
    if isinstance(node.value, ast.Name) and node.value.id == "os":
        return [] if node.attr in ALLOWED_OS or node.attr == "path" else [f"os.{node.attr}"]
    if (isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "os" and node.value.attr == "path"):
        return [] if node.attr in ALLOWED_OS_PATH else [f"os.path.{node.attr}"]
    return []


def _call_violations(node: ast.Call) -> list[str]:
    if isinstance(node.func, ast.Name) and node.func.id == "open":
        return ["open()"]
    if isinstance(node.func, ast.Attribute) and node.func.attr in FILESYSTEM_METHODS:
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id in {"files", "host", "users", "os_paths"}):
            return [f".{node.func.attr}()"]
    return []


def _violations(tree: ast.AST) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found += _attribute_violations(node)
        elif isinstance(node, ast.Call):
            found += _call_violations(node)
        else:
            found += _import_violations(node)
    return found


@pytest.mark.parametrize("module", MODULES)
def test_app_module_makes_no_linux_calls(module: str) -> None:
    tree = ast.parse((APP / module).read_text(), module)
    assert _violations(tree) == []


def test_the_check_catches_what_it_should() -> None:
    sample = ("import pwd\nimport os\nfrom pathlib import Path\nos.lstat('x')\nos.path.isfile('x')\n"
              "open('x')\nPath('x').exists()\nos.environ.get('A')\nos.path.join('a', 'b')\nfiles.lstat_or_none('x')\n")
    assert set(_violations(ast.parse(sample))) == {"import pwd", "os.lstat", ".lstat()", "os.path.isfile", "open()",
                                                   ".exists()"}
