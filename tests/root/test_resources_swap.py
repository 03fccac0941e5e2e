"""Root only. Issue 13, finding 4: a user who owns an ancestor of ``resources_dir`` cannot make
the broker serve ``/etc/shadow``, and a hard-linked resource is not served.

Before issue 13 the directory was reopened by path on every ``get_resource`` and only its own
owner and mode were checked: the second user swapped a directory she owns for a symlink, and
``get_resource {"name": "shadow"}`` returned /etc/shadow (root-owned, mode 0640, one link:
it passes a resource file's checks). Now the path is walked from ``/`` once at start, every
ancestor must be root's or the broker's and not writable by others, and the directory is pinned.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parrot_ipc import Client, ParrotError

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def eve(accounts) -> Iterator[Any]:
    with accounts.user("prs") as pw:
        yield pw


@pytest.fixture
def tree() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pipc-rs-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _resources(d: Path) -> Path:
    """A safe resources directory at ``d`` (root's, 0755) with one safe file."""
    d.mkdir(mode=0o755, parents=True)
    (d / "instructions").write_text("be kind\n")
    (d / "instructions").chmod(0o644)
    return d


def _start(broker, tree: Path, resources_dir: Path) -> tuple[str, Any]:
    cfg = tree / "config.toml"
    cfg.write_text(f'[server]\nresources_dir = "{resources_dir}"\n')
    cfg.chmod(0o644)
    sock = str(tree / "run" / "mcp.sock")
    return sock, broker(sock, "--config", str(cfg))


def _as(user: Any, *cmd: str) -> None:
    res = subprocess.run(["runuser", "-u", user.pw_name, "--", *cmd], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def _get(sock: str, name: str) -> tuple[str, str]:
    """``("ok", content)`` or ``("error", reason)`` for get_resource NAME."""
    with Client(sock) as c:
        c.get_token("reader")
        try:
            return "ok", c.get_resource(name).content
        except ParrotError as exc:
            return "error", exc.reason


@pytest.mark.parametrize("swap", ["dir_for_symlink", "parent_for_symlink"])
def test_a_user_who_owns_an_ancestor_cannot_make_it_serve_etc_shadow(broker, eve, tree: Path, swap: str) -> None:
    home = tree / "eve"
    home.mkdir(mode=0o755)
    os.chown(home, eve.pw_uid, eve.pw_gid)
    if swap == "dir_for_symlink":  # the steps: eve swaps res for a symlink to /etc
        rdir = _resources(home / "res")
        sock, _ = _start(broker, tree, rdir)
        _as(eve, "mv", str(rdir), str(home / "res.old"))
        _as(eve, "ln", "-s", "/etc", str(rdir))
    else:  # eve swaps the parent of a directory named etc for a symlink to /
        rdir = _resources(home / "d" / "etc")
        os.chown(home / "d", eve.pw_uid, eve.pw_gid)
        sock, _ = _start(broker, tree, rdir)
        _as(eve, "mv", str(home / "d"), str(home / "d.old"))
        _as(eve, "ln", "-s", "/", str(home / "d"))
    shadow = Path("/etc/shadow").read_text()
    status, body = _get(sock, "shadow")
    assert status == "error" and body == "resource_refused", (status, body[:40])
    assert shadow not in body
    # eve's ancestor made the directory unsafe from the start: nothing at all is served
    assert _get(sock, "instructions") == ("error", "resource_refused")


def test_a_safe_directory_serves_and_a_hard_linked_file_is_refused(broker, tree: Path) -> None:
    rdir = _resources(tree / "res")
    (tree / "secret").write_text("not a resource\n")
    (tree / "secret").chmod(0o644)
    os.link(tree / "secret", rdir / "linked")
    sock, _ = _start(broker, tree, rdir)
    assert _get(sock, "instructions") == ("ok", "be kind\n")
    assert _get(sock, "linked") == ("error", "resource_refused")


def test_sighup_reopens_the_directory(broker, tree: Path) -> None:
    rdir = _resources(tree / "res")
    sock, proc = _start(broker, tree, rdir)
    assert _get(sock, "instructions") == ("ok", "be kind\n")
    rdir.rename(tree / "res.old")
    _resources(rdir)
    (rdir / "instructions").write_text("be brief\n")
    assert _get(sock, "instructions") == ("ok", "be kind\n")  # pinned: the old directory
    proc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _get(sock, "instructions") != ("ok", "be brief\n"):
        assert time.monotonic() < deadline, "SIGHUP did not reopen resources_dir"
        time.sleep(0.05)
