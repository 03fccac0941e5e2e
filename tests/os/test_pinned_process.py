"""Issue 13, finding 3, in the OS layer: :class:`parrot_ipc.os.peer.PinnedProcess` reads a
peer's executable again through the pidfd pinned at accept, sees an exec(2), and fails closed
once the process is gone or the probe is closed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from parrot_ipc.os.peer import PinnedProcess, identify_peer, process_start_time

#: A child that says "ready", waits for a line, then execs /bin/sleep (same pid, new program).
EXEC_LATER = ("import os, sys; print('ready', flush=True); sys.stdin.readline(); "
              "os.execv('/bin/sleep', ['sleep', '30'])")


def _wait_for_exe(probe: PinnedProcess, want: str) -> str | None:
    deadline = time.monotonic() + 5
    while (got := probe.exe()) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    return got


@pytest.mark.parametrize("with_pidfd", [True, False], ids=["pidfd", "start_time"])
def test_the_probe_sees_an_exec_and_fails_closed_when_the_process_is_gone(with_pidfd: bool) -> None:
    child = subprocess.Popen([sys.executable, "-c", EXEC_LATER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        pidfd = os.pidfd_open(child.pid) if with_pidfd else None
        probe = PinnedProcess(child.pid, pidfd, process_start_time(child.pid))
        assert probe.exe() == os.path.realpath(sys.executable)
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert _wait_for_exe(probe, os.path.realpath("/bin/sleep")) == os.path.realpath("/bin/sleep")
        child.kill()
        child.wait()
        assert probe.exe() is None  # gone (and reaped): fail closed
        probe.close()
        probe.close()  # idempotent
        assert probe.exe() is None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_identify_peer_pins_the_process_and_close_releases_the_pidfd() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        before = len(os.listdir("/proc/self/fd"))
        cred = identify_peer(a)
        assert cred.process is not None and cred.exe is not None
        assert cred.process.exe() == cred.exe == os.readlink("/proc/self/exe")
        assert len(os.listdir("/proc/self/fd")) == before + (1 if cred.has_pidfd else 0)
        cred.process.close()
        assert len(os.listdir("/proc/self/fd")) == before
        assert cred.process.exe() is None
