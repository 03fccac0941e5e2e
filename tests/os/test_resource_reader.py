"""The OS-layer resource reader (:class:`parrot_ipc.os.resources.ResourceDir`): O_NOFOLLOW relative
to a directory fd, fstat checks on the open descriptor, names checked before any filesystem call."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from parrot_ipc.errors import ResourceRefused
from parrot_ipc.os import resources
from parrot_ipc.os.resources import ResourceDir

ME = os.geteuid()


@pytest.fixture
def rdir(tmp_path: Path) -> Path:
    d = tmp_path / "resources"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    (d / "instructions").write_text("be kind\n")
    (d / "instructions").chmod(0o644)
    return d


def test_reads_a_safe_file(rdir: Path) -> None:
    assert ResourceDir(str(rdir), ME)("instructions") == b"be kind\n"


def test_missing_file_or_directory_is_none(rdir: Path, tmp_path: Path) -> None:
    assert ResourceDir(str(rdir), ME)("nope") is None
    assert ResourceDir(str(tmp_path / "absent"), ME)("instructions") is None


def test_symlink_is_refused_not_followed(rdir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("secret elsewhere")
    target.chmod(0o644)
    (rdir / "link").symlink_to(target)
    with pytest.raises(ResourceRefused, match="symlink"):
        ResourceDir(str(rdir), ME)("link")


def test_group_or_other_writable_file_is_refused(rdir: Path) -> None:
    for mode in (0o664, 0o646):
        (rdir / "instructions").chmod(mode)
        with pytest.raises(ResourceRefused, match="not writable by group or others"):
            ResourceDir(str(rdir), ME)("instructions")


def test_group_writable_directory_is_refused(rdir: Path) -> None:
    rdir.chmod(0o775)
    with pytest.raises(ResourceRefused, match="resources_dir"):
        ResourceDir(str(rdir), ME)("instructions")


def test_file_of_another_owner_is_refused(rdir: Path) -> None:
    # The broker's uid is "someone else" here, and the file is ours (not root's unless we are root).
    other = 54321 if ME == 0 else ME
    broker_uid = 4242 if ME != 0 else 0
    if ME == 0:
        os.chown(rdir / "instructions", other, other)
    with pytest.raises(ResourceRefused, match="must be owned by root or uid"):
        ResourceDir(str(rdir), broker_uid)("instructions")


def test_non_regular_entries_are_refused(rdir: Path) -> None:
    (rdir / "sub").mkdir(mode=0o755)
    os.mkfifo(rdir / "fifo", 0o644)
    for name in ("sub", "fifo"):
        with pytest.raises(ResourceRefused, match="not a regular file"):
            ResourceDir(str(rdir), ME)(name)


def test_oversized_file_is_refused(rdir: Path) -> None:
    (rdir / "big").write_bytes(b"x" * 101)
    (rdir / "big").chmod(0o644)
    with pytest.raises(ResourceRefused, match="over 100 bytes"):
        ResourceDir(str(rdir), ME, max_bytes=100)("big")


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "/etc/passwd", "", ".hidden", "a..b", "x" * 65,
                                  "a\x00b", "../../etc/shadow"])
def test_bad_names_are_refused_before_any_filesystem_call(rdir: Path, name: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[str] = []

    class NoOs:
        """Stands in for the ``os`` module inside parrot_ipc.os.resources: any use is recorded."""

        def __getattr__(self, attr: str) -> object:
            touched.append(attr)
            raise AssertionError(f"os.{attr} used for a bad name")

    monkeypatch.setattr(resources, "os", NoOs())
    assert ResourceDir(str(rdir), ME)(name) is None
    assert touched == []


def test_hard_linked_resource_is_refused(rdir: Path, tmp_path: Path) -> None:
    os.link(rdir / "instructions", tmp_path / "second-name")
    with pytest.raises(ResourceRefused, match="exactly one hard link"):
        ResourceDir(str(rdir), ME)("instructions")


def test_resources_dir_that_is_a_symlink_or_a_file_is_refused(rdir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(rdir)
    with pytest.raises(ResourceRefused, match=f"resources_dir {link} is a symlink"):
        ResourceDir(str(link), ME)("instructions")
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ResourceRefused, match=r"is a regular file .*, not a directory"):
        ResourceDir(str(afile), ME)("instructions")
    # A path through a non-directory is still "no such directory".
    assert ResourceDir(str(afile / "sub"), ME)("instructions") is None


def test_no_descriptor_leaks_when_refusing(rdir: Path) -> None:
    (rdir / "instructions").chmod(0o666)
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with pytest.raises(ResourceRefused):
            ResourceDir(str(rdir), ME)("instructions")
    assert set(os.listdir("/proc/self/fd")) == before
