"""The CLI's session file (:mod:`parrot_ipc.app.session_file`) on disk: loaded only through the
safe-open helper (a symlink, a FIFO, a hard link, a loose mode are refused at once, with the
``chmod 600`` hint), saved atomically with mode 0600.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from parrot_ipc.app import session_file
from parrot_ipc.app.session_file import SavedSession
from parrot_ipc.errors import SessionFileError

SAVED = SavedSession(instance_id="alice", session_token="tok-7f3a-secret", expires_at="2030-01-01T00:00:00Z")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "session.json"
    session_file.save(p, SAVED)
    return p


def load_error(path: Path) -> str:
    with pytest.raises(SessionFileError) as info:
        session_file.load(path)
    msg = str(info.value)
    assert "\n" not in msg and SAVED.session_token not in msg
    return msg


def test_save_then_load_round_trips_with_mode_0600(path: Path) -> None:
    assert session_file.load(path) == SAVED
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp left behind


def test_save_is_0600_even_under_a_loose_umask_and_replaces(path: Path) -> None:
    path.chmod(0o644)
    old = os.umask(0)
    try:
        session_file.save(path, SavedSession(instance_id="bob", session_token="t2"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert session_file.load(path).instance_id == "bob"


def test_missing_file_says_register(tmp_path: Path) -> None:
    assert "run 'parrot-ipc register NAME' first" in load_error(tmp_path / "absent")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_loose_mode_is_refused_with_the_chmod_hint(path: Path, mode: int) -> None:
    path.chmod(mode)
    msg = load_error(path)
    assert f"mode {mode:04o}" in msg and f"chmod 600 {path}" in msg and str(path) in msg


def test_a_symlink_is_refused(path: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(path)
    msg = load_error(link)
    assert f"session file {link} is a symlink" in msg


def test_a_hard_link_is_refused(path: Path, tmp_path: Path) -> None:
    os.link(path, tmp_path / "other-name")
    assert "exactly one hard link" in load_error(path)


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    child = subprocess.run(  # in a child with a timeout: a blocking open(2) of a FIFO would hang
        [sys.executable, "-c", "import sys; from pathlib import Path; from parrot_ipc.app import session_file\n"
         "try:\n    session_file.load(Path(sys.argv[1]))\nexcept Exception as e:\n    print(e)", str(fifo)],
        capture_output=True, text=True, timeout=20)
    assert child.returncode == 0, child.stderr
    assert f"session file {fifo} is a FIFO" in child.stdout


def test_a_damaged_file_says_register_again(path: Path) -> None:
    path.write_text("{not json")
    assert "damaged" in load_error(path) and "register again" in load_error(path)


def test_remove(path: Path) -> None:
    assert session_file.remove(path) is True
    assert session_file.remove(path) is False


def test_session_path_honours_the_environment(tmp_path: Path) -> None:
    assert session_file.session_path({"PARROT_IPC_SESSION": str(tmp_path / "s")}) == tmp_path / "s"
    assert session_file.session_path({"PARROT_IPC_SESSION": ""}) == Path.home() / ".ipc-session"
