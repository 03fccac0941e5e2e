"""Issue 13, finding 7, end to end: a FIFO at ``$PARROT_IPC_SESSION`` never hangs the CLI.

The CLI opens the session file through :func:`parrot_ipc.os.files.open_checked`
(``O_NONBLOCK | O_NOFOLLOW``, then fstat(2)): a FIFO is refused at once with exit code 4,
whether or not a writer ever opens it (fifo(7): a blocking open for reading waits for one).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

EXIT_SESSION = 4


def test_a_fifo_as_the_session_file_exits_4_at_once(broker, cli, tmp_path: Path) -> None:
    b = broker()
    fifo = tmp_path / "session.fifo"
    os.mkfifo(fifo, 0o600)
    for args in (("whoami",), ("recv",), ("send", "bob", "hi")):
        t0 = time.monotonic()
        res = cli(b.socket_path, fifo, *args, timeout_s=10.0)  # a hang raises TimeoutExpired
        assert res.returncode == EXIT_SESSION, res
        assert f"session file {fifo} is a FIFO" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert time.monotonic() - t0 < 10.0
    doc = json.loads(cli(b.socket_path, fifo, "whoami", "--json", timeout_s=10.0).stdout)
    assert doc["error"]["reason"] == "session_file"
