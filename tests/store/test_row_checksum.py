"""Every message row carries a checksum, checked on read; a row that fails it is quarantined,
audited and never delivered (issue 14: "a one-byte edit inside a message's content is
delivered, silently altered").

The end-to-end test fills a real database through a real broker, stops it, flips one byte
inside one message's content in ``parrot.db`` itself, and starts the broker again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from parrot_ipc import Client
from parrot_ipc.store.rows import row_checksum
from parrot_ipc.store.schema import migrate
from parrot_ipc.store.sqlite import DB_NAME, SqliteStore

from .conftest import BrokerProcess, database_at_version


def _flip_one_byte(db_path: Path, needle: bytes) -> None:
    raw = bytearray(db_path.read_bytes())
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0, "the content must be in the file exactly once"
    raw[at + len(needle) - 1] ^= 0x01  # one byte, still ASCII: quick_check cannot see it
    db_path.write_bytes(bytes(raw))


def test_a_one_byte_edit_in_a_message_is_quarantined_audited_and_never_delivered(
        broker_proc: BrokerProcess, tmp_path: Path) -> None:
    bp = broker_proc
    bp.start()
    with Client(bp.socket) as a:
        a.get_token("alice")
        ids = [a.send("bob", f"message {i} pay 100 dollars to account 4711-{i:03d}").id for i in range(20)]
    assert bp.stop() == 0  # checkpoints (TRUNCATE): every row is in parrot.db itself
    db_path = Path(bp.state_dir) / DB_NAME
    _flip_one_byte(db_path, b"account 4711-007")

    bp.extra = ["--audit-log", str(tmp_path / "audit.jsonl"), "--log-level", "INFO"]
    bp.start()
    with Client(bp.socket) as b:
        b.get_token("bob")
        got = b.receive(max=100)
        b.ack([m.id for m in got])
        assert b.ping() == "pong"  # the broker keeps serving
    assert bp.stop() == 0
    contents = [m.content for m in got]
    assert len(got) == 19 and ids[7] not in [m.id for m in got]
    assert contents == [f"message {i} pay 100 dollars to account 4711-{i:03d}" for i in range(20) if i != 7]
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    quarantined = [e for e in events if e.get("event") == "message_quarantined"]
    assert len(quarantined) == 1
    assert quarantined[0]["id"] == ids[7] and quarantined[0]["mailbox"] == "bob"
    assert "4711" not in json.dumps(quarantined[0])  # never the content
    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT CAST(id AS TEXT), CAST(content AS TEXT) FROM quarantine").fetchall()
    db.close()
    assert rows == [(ids[7], "message 7 pay 100 dollars to account 4711-006")]  # kept for inspection


def test_a_byte_that_is_no_longer_utf8_is_quarantined_not_a_refusal(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = SqliteStore.open(str(d), clock=lambda: 1.8e9)
    from parrot_ipc.core.protocol import Message
    from parrot_ipc.store.base import StoredMessage
    for i, text in enumerate(["caf\u00e9 one", "plain two"]):
        s.enqueue(StoredMessage(Message(id=f"00000000000{i + 1}000000", from_="a", to="bob", content=text,
                                        sent_at="2027-01-15T08:00:00.000Z"), "bob", 9))
    s.close()
    raw = bytearray((d / DB_NAME).read_bytes())
    at = raw.find("caf\u00e9 one".encode())
    raw[at + 3] = 0xFF  # the first byte of "é" becomes a byte UTF-8 never has
    (d / DB_NAME).write_bytes(bytes(raw))
    s2 = SqliteStore.open(str(d), clock=lambda: 1.8e9)
    assert [m.content for m in s2.lease("bob", 10, 1.8e9 + 60)] == ["plain two"]
    assert s2.quarantined == [("000000000001000000", "bob")]
    s2.close()


def test_migration_to_v5_computes_the_checksum_of_every_stored_row(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = database_at_version(path, 4)
    db.execute("INSERT INTO messages (id, mailbox, sender, content, data, sent_at, size_bytes, recipient) "
               "VALUES ('000000000001000000', 'bob', 'alice', 'hi', ?, '2027-01-15T08:00:00.000Z', 2, NULL)",
               (b'{"k":1}',))
    assert migrate(db) == 4
    (checksum,) = db.execute("SELECT checksum FROM messages").fetchone()
    assert checksum == row_checksum("000000000001000000", "alice", None, "hi", b'{"k":1}',
                                    "2027-01-15T08:00:00.000Z")
    db.close()
    os.chmod(path, 0o600)


def test_the_checksum_covers_every_field_a_client_reads() -> None:
    mid, sender, to, content, data, sent = ("000000000001000000", "alice", "bob", "hi", b'{"k":1}',
                                            "2027-01-15T08:00:00.000Z")
    variants = [(mid, sender, to, content, data, sent), (mid + "1", sender, to, content, data, sent),
                (mid, sender + "x", to, content, data, sent), (mid, sender, None, content, data, sent),
                (mid, sender, to, content + "x", data, sent), (mid, sender, to, content, None, sent),
                (mid, sender, to, content, b'{"k":2}', sent), (mid, sender, to, content, data, sent + "x"),
                (mid, sender, to, "hi\n{", None, sent)]
    assert len({row_checksum(*v) for v in variants}) == len(variants)
