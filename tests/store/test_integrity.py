"""A damaged state database is refused at start with one line, never a traceback (issue 14).

Each test fills a real database through a real broker, stops it, damages the file the way the
issue's attack run did (half a message page zeroed; random bytes over an index's root page; a
row whose value has the wrong type, which ``PRAGMA quick_check`` does not look at), then starts
``parrot-ipc serve`` on it in a subprocess: exit code 1, exactly one line on stderr naming the
file and the fix, no ``Traceback``, and no socket.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from parrot_ipc import Client

from .conftest import BrokerProcess


def _filled(bp: BrokerProcess, n: int = 1500) -> Path:
    bp.start()
    with Client(bp.socket) as a:
        a.get_token("alice")
        for i in range(n):
            a.send("bob", f"message {i} " + "y" * 300)
    assert bp.stop() == 0
    return Path(bp.state_dir) / "parrot.db"


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (WARNING|INFO) ")


def _serve(tmp_path: Path, state: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parrot_ipc", "serve", "--socket", str(tmp_path / "run2" / "mcp.sock"),
         "--state-dir", state, "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=30)


def _assert_refused(tmp_path: Path, db: Path, res: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1 with one ``error:`` line naming the file and the fix, no traceback. Log lines of
    a start may come first (a row that only the mailboxes' read finds is refused once the
    broker already answers ``ping``; the RLIMIT_NOFILE warning of a small hard limit)."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert all(_LOG_LINE.match(x) for x in lines[:-1]), res.stderr
    line = lines[-1]
    assert line.startswith("error: refusing to start: "), line
    assert str(db) in line and "restore parrot.db from a backup" in line, line
    for w in words:
        assert w in line, line
    assert not (tmp_path / "run2" / "mcp.sock").exists()
    return line


def _page_of(db: Path, name: str) -> tuple[int, int]:
    con = sqlite3.connect(db)
    try:
        size = con.execute("PRAGMA page_size").fetchone()[0]
        (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    finally:
        con.close()
    return size, root


def test_half_a_message_page_zeroed_is_refused_in_one_line(broker_proc: BrokerProcess, tmp_path: Path) -> None:
    db = _filled(broker_proc)
    size = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]
    pages = db.stat().st_size // size
    with open(db, "r+b") as f:  # a leaf page in the middle of the file: message rows
        f.seek((pages // 2) * size + 200)
        f.write(b"\0" * (size // 2))
    # quick_check names the damage, or SQLite itself reports "malformed" first when the zeroed
    # page is one the check needs (which page is in the middle depends on commit timing).
    line = _assert_refused(tmp_path, db, _serve(tmp_path, broker_proc.state_dir), "is corrupt")
    assert "quick_check:" in line or "database disk image is malformed" in line, line


def test_random_bytes_over_an_index_page_are_refused_in_one_line(broker_proc: BrokerProcess, tmp_path: Path) -> None:
    db = _filled(broker_proc)
    size, root = _page_of(db, "messages_by_mailbox")
    rnd = random.Random(14)
    with open(db, "r+b") as f:
        f.seek((root - 1) * size + 100)
        f.write(bytes(rnd.randrange(256) for _ in range(size - 200)))
    _assert_refused(tmp_path, db, _serve(tmp_path, broker_proc.state_dir), "is corrupt (quick_check:")


def test_a_row_quick_check_lets_through_is_refused_in_one_line(broker_proc: BrokerProcess, tmp_path: Path) -> None:
    db = _filled(broker_proc, n=3)
    con = sqlite3.connect(db)
    with con:  # a text size: quick_check checks NOT NULL, not types (the table is not STRICT)
        con.execute("UPDATE messages SET size_bytes = 'abc'")
    con.close()
    _assert_refused(tmp_path, db, _serve(tmp_path, broker_proc.state_dir), "a row this broker cannot read")


def test_an_intact_database_still_starts_with_its_mail(broker_proc: BrokerProcess) -> None:
    _filled(broker_proc, n=3)
    broker_proc.start()
    with Client(broker_proc.socket) as b:
        b.get_token("bob")
        assert len(b.receive(max=10)) == 3
    assert broker_proc.stop() == 0
    assert os.path.exists(Path(broker_proc.state_dir) / "parrot.db")
