"""Root only. Issue 13, finding 5: clients authenticate the broker before sending anything.

A second Unix user runs a fake broker (a standard-library script under /usr/bin/python3 that
records every byte it receives) at a path a root client is pointed at. Before issue 13 the
root client sent its session token and message there; now every client (the blocking
``Client``, the trio ``AsyncClient``, hence the CLI and the MCP bridge) reads SO_PEERCRED on
its own connection first, refuses a listener that is not root, itself or the expected broker
user, and sends nothing. The CLI exits 3, says who was listening and hints at ``doctor``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from parrot_ipc import AsyncClient, Client
from parrot_ipc.app import session_file
from parrot_ipc.errors import BrokerUnavailable, UntrustedBroker

pytestmark = pytest.mark.root

SYSTEM_PYTHON = "/usr/bin/python3"

FAKE_BROKER = r'''
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(16)
s.settimeout(30)
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept()
    except OSError:
        break
    c.settimeout(0.5)
    data = b""
    try:
        while chunk := c.recv(65536):
            data += chunk
    except OSError:
        pass
    with open(log, "ab") as f:
        f.write(data)
    c.close()
'''


@dataclass
class Fake:
    socket: str
    log: Path
    user: Any
    proc: subprocess.Popen[str]

    def received(self) -> bytes:
        time.sleep(0.7)  # the fake reads each connection for up to 0.5 s
        return self.log.read_bytes()


@pytest.fixture
def fake(accounts) -> Iterator[Fake]:
    with accounts.user("pmal") as mallory, accounts.open_dir("pipc-fake-") as d:
        os.chown(d, mallory.pw_uid, mallory.pw_gid)
        script, log = d / "fake.py", d / "received.bin"
        script.write_text(FAKE_BROKER)
        log.write_bytes(b"")
        os.chown(log, mallory.pw_uid, mallory.pw_gid)
        sock = str(d / "mcp.sock")
        proc = subprocess.Popen(["runuser", "-u", mallory.pw_name, "--", SYSTEM_PYTHON, str(script), sock, str(log)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield Fake(sock, log, mallory, proc)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # runuser and the script it forked
            proc.wait()  # accounts.user() waits for the forked script before userdel



def _session(tmp: Path) -> Path:
    path = tmp / "root.session"
    session_file.save(path, session_file.SavedSession(instance_id="root-agent", session_token="TOKEN-" + "x" * 40,
                                                      expires_at="2099-01-01T00:00:00Z"))
    return path


def test_the_cli_refuses_a_broker_run_by_another_user_and_sends_nothing(fake: Fake, cli) -> None:
    with tempfile.TemporaryDirectory() as t:
        sess = _session(Path(t))
        for args in (("send", "bob", "the secret plan"), ("register", "root-agent"), ("ping",)):
            res = cli(fake.socket, sess, *args)
            assert res.returncode == 3, res
            assert f"uid {fake.user.pw_uid} ({fake.user.pw_name})" in res.stderr, res.stderr
            assert "parrot-ipc doctor" in res.stderr and "Traceback" not in res.stderr
        doc = json.loads(cli(fake.socket, sess, "whoami", "--json").stdout)
        assert doc["error"]["reason"] == "broker_not_trusted"
        assert doc["error"]["listener_uid"] == fake.user.pw_uid
    got = fake.received()
    assert got == b"", got[:200]  # no token, no message text, not a byte


def test_both_clients_raise_untrusted_broker_unless_its_user_is_expected(fake: Fake) -> None:
    with pytest.raises(UntrustedBroker) as info:
        Client(fake.socket)
    assert info.value.listener_uid == fake.user.pw_uid and info.value.exit_code == 3

    async def enter() -> None:
        async with AsyncClient(fake.socket):
            pass

    with pytest.raises(UntrustedBroker):
        trio.run(enter)
    assert fake.received() == b""
    # named as the broker user, the same listener is accepted (this fake then hears a ping)
    with Client(fake.socket, broker_user=fake.user.pw_name, timeout_s=2) as c, pytest.raises((BrokerUnavailable, TimeoutError)):
        c.ping()  # the fake never answers
    assert b'"ping"' in fake.received()
