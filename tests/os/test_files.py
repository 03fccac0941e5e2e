"""The one safe-open helper (:mod:`parrot_ipc.os.files`): symlinks, FIFOs, hard links, owner,
mode, group and type are refused with a message naming the path and what was found, and no
descriptor leaks on a refusal. Real files under ``tmp_path``; a SIGALRM guard turns a hang
(a FIFO opened without ``O_NONBLOCK``) into a failure instead of a stuck suite.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from parrot_ipc.errors import StartupError, UnsafeFile
from parrot_ipc.os import files, host, users
from parrot_ipc.os.files import FileRule, open_checked, path_problem, problem, read_checked

ME = os.geteuid()
OTHER = 54321  # a uid that owns nothing here
HANG_LIMIT_S = 5


def rule(kind: files.Kind = "file", *, owners: frozenset[int] = frozenset({ME}), forbidden_mode: int = 0o077,
         exact_mode: int | None = None, single_link: bool = True, group: int | None = None) -> FileRule:
    return FileRule(kind, owners, forbidden_mode, exact_mode, single_link, "test file", group)


def private(path: Path, text: str = "data", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """Fail (instead of hanging the suite) if a test blocks for more than HANG_LIMIT_S seconds."""
    def hung(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"blocked for more than {HANG_LIMIT_S} s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def refusal(path: str | Path, r: FileRule, *, flags: int = os.O_RDONLY, dir_fd: int | None = None,
            name: str | None = None, create_mode: int | None = None) -> UnsafeFile:
    before = open_fds()
    with pytest.raises(UnsafeFile) as info:
        open_checked(path, r, flags=flags, dir_fd=dir_fd, name=name, create_mode=create_mode)
    assert open_fds() == before, "a refused open left a descriptor open"
    msg = str(info.value)
    assert "\n" not in msg and r.what in msg
    return info.value


# --------------------------------------------------------------------------- accepted
def test_a_private_regular_file_opens_blocking_and_is_returned_open(tmp_path: Path) -> None:
    path = private(tmp_path / "f", "hello")
    fd = open_checked(path, rule())
    try:
        assert os.get_blocking(fd)  # O_NONBLOCK was only for the open
        assert os.get_inheritable(fd) is False  # O_CLOEXEC
        assert os.read(fd, 100) == b"hello"
    finally:
        os.close(fd)


def test_a_directory_opens_with_a_dir_rule(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    fd = open_checked(d, rule("dir", exact_mode=0o700))
    try:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_open_relative_to_a_dir_fd_names_the_shown_path(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    private(d / "entry", "inside")
    private(tmp_path / "entry", "outside")
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_checked("entry", rule(), max_bytes=100, dir_fd=dfd) == b"inside"
        (d / "entry").chmod(0o644)
        err = refusal("entry", rule(), dir_fd=dfd, name=f"{d}/entry")
        assert f"{d}/entry" in str(err) and "mode 0644" in str(err)
    finally:
        os.close(dfd)


def test_create_mode_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "new"
    old = os.umask(0o022)
    try:
        fd = open_checked(path, rule(), flags=os.O_WRONLY | os.O_APPEND, create_mode=0o600)
    finally:
        os.umask(old)
    os.close(fd)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == ME


# --------------------------------------------------------------------------- refused
def test_a_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    target = private(tmp_path / "target", "secret")
    link = tmp_path / "link"
    link.symlink_to(target)
    err = refusal(link, rule())
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ELOOP
    assert f"test file {link} is a symlink owned by uid {ME}" in str(err)
    assert "secret" not in str(err)
    # A symlink to a directory, under a dir rule (open(2) says ENOTDIR there), and a dangling
    # symlink under O_CREAT (never creates the target).
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (tmp_path / "dlink").symlink_to(d)
    assert "is a symlink" in str(refusal(tmp_path / "dlink", rule("dir")))
    (tmp_path / "dangling").symlink_to(tmp_path / "absent")
    assert "is a symlink" in str(refusal(tmp_path / "dangling", rule(), flags=os.O_WRONLY, create_mode=0o600))
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY, os.O_RDWR], ids=["read", "write", "readwrite"])
def test_a_fifo_in_a_files_place_is_refused_at_once(tmp_path: Path, flags: int) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    err = refusal(fifo, rule(), flags=flags)  # no writer/reader: a blocking open would hang
    assert f"test file {fifo} is a FIFO owned by uid {ME} with mode 0600, not a regular file" == str(err)
    with pytest.raises(UnsafeFile, match="FIFO"):
        read_checked(fifo, rule(), max_bytes=10)


def test_a_hard_linked_file_is_refused(tmp_path: Path) -> None:
    path = private(tmp_path / "f")
    os.link(path, tmp_path / "second-name")
    assert os.lstat(path).st_nlink == 2
    err = refusal(path, rule())
    assert str(err) == f"test file {path} must have exactly one hard link; found 2"
    # Directories have many links by nature; single_link=False allows it for a file.
    os.close(open_checked(path, rule(single_link=False)))


def test_a_file_of_another_owner_is_refused(tmp_path: Path) -> None:
    path = private(tmp_path / "f")
    err = refusal(path, rule(owners=frozenset({OTHER})))
    assert str(err) == (f"test file {path} must be owned by uid {OTHER} and private to its owner "
                        f"(mode 0600 for a file, 0700 for a directory); found a regular file owned by uid {ME} with mode 0600")
    assert f"must be owned by uid {OTHER} or {OTHER + 1} and" in str(refusal(path, rule(owners=frozenset({OTHER, OTHER + 1}))))


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o660, 0o666])
def test_a_group_or_other_writable_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = private(tmp_path / "f", mode=mode)
    err = refusal(path, rule(forbidden_mode=0o022))
    assert str(path) in str(err) and f"mode {mode:04o}" in str(err) and f"uid {ME}" in str(err)
    assert "not writable by group or others" in str(err)
    path.chmod(0o644)  # readable by others is fine under 0o022
    os.close(open_checked(path, rule(forbidden_mode=0o022)))


def test_exact_mode_is_exact(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for mode in (0o500, 0o750, 0o711):
        d.chmod(mode)
        err = refusal(d, rule("dir", forbidden_mode=0, exact_mode=0o700))
        assert f"with mode 0700; found a directory owned by uid {ME} with mode {mode:04o}" in str(err)
    d.chmod(0o700)
    os.close(open_checked(d, rule("dir", forbidden_mode=0, exact_mode=0o700)))


def test_the_wrong_kind_is_refused_naming_what_was_found(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    f = private(tmp_path / "f")
    assert str(refusal(d, rule())) == f"test file {d} is a directory owned by uid {ME} with mode 0700, not a regular file"
    assert str(refusal(d, rule(), flags=os.O_WRONLY)) == str(refusal(d, rule()))  # EISDIR
    assert str(refusal(f, rule("dir"))) == f"test file {f} is a regular file owned by uid {ME} with mode 0600, not a directory"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s:
        s.bind(str(tmp_path / "sock"))
        assert "is a socket owned by" in str(refusal(tmp_path / "sock", rule()))  # ENXIO


def test_a_group_rule(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o750)
    d.chmod(0o750)
    gid = os.lstat(d).st_gid
    assert problem(os.lstat(d), rule("dir", forbidden_mode=0, exact_mode=0o750, group=gid)) is None
    why = problem(os.lstat(d), rule("dir", forbidden_mode=0, exact_mode=0o750, group=gid + 1))
    assert why == (f"must be owned by {'root or uid 0' if ME == 0 else f'uid {ME}'} with mode 0750 and group "
                   f"{gid + 1}; found a directory owned by uid {ME} with mode 0750, group {gid}")


def test_missing_and_unreadable_paths_are_oserrors_and_leak_nothing(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(FileNotFoundError):
        open_checked(tmp_path / "absent", rule())
    with pytest.raises(NotADirectoryError):  # through a non-directory parent: not "the wrong kind"
        open_checked(private(tmp_path / "f") / "x", rule())
    with pytest.raises(ValueError, match="O_TRUNC"):
        open_checked(tmp_path / "f", rule(), flags=os.O_WRONLY | os.O_TRUNC)
    assert (tmp_path / "f").read_text() == "data"
    assert open_fds() == before


def test_no_descriptor_leaks_over_many_refusals(tmp_path: Path) -> None:
    path = private(tmp_path / "f", mode=0o644)
    before = open_fds()
    for _ in range(200):
        with pytest.raises(UnsafeFile):
            open_checked(path, rule())
    assert open_fds() == before


# --------------------------------------------------------------------------- read, lstat checks
def test_read_checked_limits_size(tmp_path: Path) -> None:
    path = private(tmp_path / "f", "x" * 101)
    assert read_checked(path, rule(), max_bytes=101) == b"x" * 101
    before = open_fds()
    with pytest.raises(UnsafeFile, match=f"test file {path} is over 100 bytes"):
        read_checked(path, rule(), max_bytes=100)
    assert open_fds() == before


def test_path_problem_checks_without_opening(tmp_path: Path) -> None:
    sock_rule = FileRule("socket", frozenset({ME}), 0, exact_mode=0o600, what="socket path")
    path = tmp_path / "s"
    assert path_problem(path, sock_rule) == f"socket path {path} does not exist"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        path.chmod(0o600)
        assert path_problem(path, sock_rule) is None
        path.chmod(0o644)
        assert "with mode 0600; found a socket owned by" in str(path_problem(path, sock_rule))
    with pytest.raises(ValueError):
        open_checked(path, sock_rule)


def test_describe_and_kind_of(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo", 0o640)
    os.chmod(tmp_path / "fifo", 0o640)
    (tmp_path / "link").symlink_to("nowhere")
    assert files.describe(os.lstat(tmp_path / "fifo")) == f"a FIFO owned by uid {ME} with mode 0640"
    assert files.kind_of(os.lstat(tmp_path / "link")) == "symlink"
    assert files.kind_of(os.stat("/dev/null")) == "special file"
    assert files.lstat_or_none(tmp_path / "absent") is None


def test_owner_mode_problem_and_policy_rule(tmp_path: Path) -> None:
    path = private(tmp_path / "f", mode=0o664)
    assert "must be owned by root or uid" in str(files.owner_mode_problem(os.lstat(path), 4242))
    path.chmod(0o644)
    assert files.owner_mode_problem(os.lstat(path), ME) is None
    r = files.policy_file_rule(ME, "config")
    assert r.owners == frozenset({0, ME}) and r.forbidden_mode == 0o022 and r.single_link
    assert not files.policy_file_rule(ME, "dir", "dir").single_link


def test_read_private_file(tmp_path: Path) -> None:
    path = private(tmp_path / "secret", "s3cret")
    assert files.read_private_file(str(path)) == b"s3cret"
    path.chmod(0o640)
    with pytest.raises(StartupError, match="mode 0640"):
        files.read_private_file(str(path))
    with pytest.raises(StartupError, match="cannot open secret file"):
        files.read_private_file(str(tmp_path / "absent"))


# --------------------------------------------------------------------------- write, remove
@pytest.mark.parametrize("umask", [0, 0o077])
def test_write_atomic_is_exactly_the_mode_and_leaves_no_temp(tmp_path: Path, umask: int) -> None:
    path = private(tmp_path / "f", "old", 0o644)
    old = os.umask(umask)
    try:
        files.write_atomic(path, b"new", mode=0o600)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_write_atomic_failure_removes_the_temp_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "dir-in-the-way"
    path.mkdir()
    (path / "x").write_text("keeps rename from replacing it")
    with pytest.raises(OSError):
        files.write_atomic(path, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]


def test_remove_file(tmp_path: Path) -> None:
    path = private(tmp_path / "f")
    assert files.remove_file(path) is True
    assert files.remove_file(path) is False


# --------------------------------------------------------------------------- users, host
def test_users_lookups() -> None:
    assert users.effective_uid() == ME
    assert users.uid_of("root") == 0 and users.gid_of("root") == 0
    assert users.user_name(0) == "root"
    assert users.uid_of("no-such-user-parrot-xyz") is None
    assert users.gid_of("no-such-group-parrot-xyz") is None
    assert users.user_name(2**31 - 7) is None


def test_host_probes(tmp_path: Path) -> None:
    f = private(tmp_path / "f", "a,b\n")
    (tmp_path / "link").symlink_to(f)
    (tmp_path / "dangling").symlink_to(tmp_path / "absent")
    assert host.exists(str(f)) and host.is_file(str(tmp_path / "link")) and host.is_dir(str(tmp_path))
    assert not host.exists(str(tmp_path / "dangling")) and not host.is_file(str(tmp_path))
    assert not host.is_dir(str(f))
    assert host.read_text(str(f)) == "a,b\n"
    with pytest.raises(FileNotFoundError):
        host.read_text(str(tmp_path / "absent"))
