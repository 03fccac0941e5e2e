"""Issue 13, finding 4, in the OS layer: ``resources_dir`` is opened once, walked from ``/``
without following symlinks, every ancestor checked, and pinned until :meth:`ResourceDir.reopen`
(the daemon calls it on SIGHUP). Before, the directory was reopened by path on every call and
only its own owner and mode were checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from parrot_ipc.errors import ResourceRefused
from parrot_ipc.os.resources import ResourceDir, open_pinned_dir

ME = os.geteuid()


def _resdir(parent: Path, text: str) -> Path:
    d = parent / "res"
    d.mkdir(mode=0o755)
    (d / "instructions").write_text(text)
    (d / "instructions").chmod(0o644)
    return d


def test_the_directory_is_pinned_until_reopen(tmp_path: Path) -> None:
    d = _resdir(tmp_path, "first")
    reader = ResourceDir(str(d), ME)
    assert reader.reopen() is None
    d.rename(tmp_path / "moved")  # swap the directory under the broker
    _resdir(tmp_path, "second")
    assert reader("instructions") == b"first"  # still the pinned one
    assert reader.reopen() is None  # SIGHUP
    assert reader("instructions") == b"second"
    reader.close()


def test_a_group_writable_ancestor_is_refused_and_a_sticky_one_is_not(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    parent.mkdir(mode=0o755)
    d = _resdir(parent, "x")
    parent.chmod(0o775)
    reader = ResourceDir(str(d), ME)
    why = reader.reopen()
    assert why is not None and f"resources_dir ancestor {parent} must be owned by" in why and "0775" in why
    with pytest.raises(ResourceRefused, match="ancestor"):
        reader("instructions")
    parent.chmod(0o1777)  # sticky, like /tmp: nobody else may rename or remove res
    assert reader.reopen() is None and reader("instructions") == b"x"
    reader.close()


def test_a_symlinked_ancestor_is_resolved_once_and_the_walk_follows_none(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    _resdir(real, "via link")
    (tmp_path / "alias").symlink_to(real)
    fd = open_pinned_dir(str(tmp_path / "alias" / "res"), ME)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(real / "res"))
    finally:
        os.close(fd)


@pytest.mark.root
def test_an_ancestor_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    parent.mkdir(mode=0o755)
    d = _resdir(parent, "x")
    os.chown(parent, 54321, 54321)
    why = ResourceDir(str(d), ME).reopen()
    assert why is not None and f"resources_dir ancestor {parent} must be owned by root" in why
    assert "owned by uid 54321" in why
