"""parrot-ipc under a real systemd 252 as PID 1 (systemd-nspawn), installed as docs/operations.md says.

The container is built and booted by :mod:`nspawn_box` (beside this file) (root only; under CI a
container that cannot boot FAILS with the command that failed, it is never skipped). The system
service is installed by ``deploy/install-system.sh`` and the user service by
``deploy/install-user.sh``, the very scripts docs/operations.md shows
(``test_docs_show_the_install_scripts`` checks that), and the audit-log pipeline is taken from
the docs' text. Each check writes ``check: evidence`` to the transcript, which the terminal
summary prints (and ``$TMPDIR/parrot-ipc-systemd-transcript.txt`` keeps).

The tests run in file order on one booted container (module fixture), as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_box import BootFailed, Container, Transcript, booted

REPO = Path(__file__).resolve().parents[2]
SRC = "/usr/local/src/parrot-ipc"
CLI = "/opt/parrot-ipc/venv/bin/parrot-ipc"
SOCK = "/run/parrot-mcp/mcp.sock"
OTHER = "agent"
MAX_EXPOSURE = 1.0
TRANSCRIPT = Path(tempfile.gettempdir()) / "parrot-ipc-systemd-transcript.txt"

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def log() -> Transcript:
    TRANSCRIPT.write_text("")
    return Transcript(TRANSCRIPT)


@pytest.fixture(scope="module")
def box(log: Transcript) -> Iterator[Container]:
    if os.geteuid() != 0:
        pytest.skip("needs root: boots a container")  # the root marker turns this into a failure in CI
    try:
        with booted(REPO, log, checkout_at=SRC) as c:
            t0 = time.monotonic()
            c.run(f"cd {SRC} && sh deploy/install-system.sh", timeout_s=900)
            log.note("install", f"sh deploy/install-system.sh: ok in {time.monotonic() - t0:.0f} s")
            c.run(f"useradd --create-home --shell /bin/sh {OTHER}")
            yield c
    except BootFailed as exc:
        pytest.fail(f"cannot boot systemd in a container: {exc}", pytrace=False)


def wait_for(box: Container, cmd: str, want: str, timeout_s: float = 90.0, line: bool = False) -> str:
    """Poll ``cmd`` in the container until its stdout contains ``want`` (as a whole line, if
    ``line``); return that stdout."""
    deadline = time.monotonic() + timeout_s
    out = ""
    while time.monotonic() < deadline:
        out = box.run(cmd, check=False).stdout
        if (want in out.splitlines()) if line else (want in out):
            return out
        time.sleep(0.5)
    raise AssertionError(f"{cmd!r} never printed {want!r} within {timeout_s} s; last: {out!r}")


def agent(name: str) -> str:
    """The CLI as root with a session file for instance ``name``."""
    return f"PARROT_IPC_SESSION=/root/{name}.session PARROT_IPC_SOCKET={SOCK} {CLI}"


def show(box: Container, unit: str, *props: str, user: str | None = None) -> dict[str, str]:
    """``systemctl show`` properties of ``unit``."""
    scope = "--user " if user else ""
    out = box.out(f"systemctl {scope}show {unit} " + " ".join(f"-p {p}" for p in props), user=user)
    return dict(line.split("=", 1) for line in out.splitlines())


def stat_line(box: Container, path: str, user: str | None = None) -> str:
    return box.out(f"stat -c '%U:%G %a %F' {path}", user=user)


# --------------------------------------------------------------------------- the system service
def test_socket_and_directory_exist_before_any_connection(box: Container, log: Transcript) -> None:
    assert show(box, "parrot-ipc.service", "ActiveState")["ActiveState"] == "inactive"
    d, s = stat_line(box, "/run/parrot-mcp"), stat_line(box, SOCK)
    log.note("before any connection", f"/run/parrot-mcp {d}; {SOCK} {s}; parrot-ipc.service inactive")
    assert d == "parrot-mcp:parrot-mcp 700 directory"  # bug 1: SocketUser= alone left it root:root
    assert s == "parrot-mcp:parrot-mcp 600 socket"


def test_socket_user_alone_leaves_a_root_directory_and_doctor_says_why(box: Container, log: Transcript) -> None:
    """Bug 1, shown and fixed: without the socket unit's ExecStartPre= (a drop-in empties it)
    systemd makes /run/parrot-mcp root:root 0700, parrot-mcp cannot connect, and doctor's
    runtime-dir row names the cause; the shipped unit puts it right."""
    drop_in = "/run/systemd/system/parrot-ipc.socket.d"
    box.run(f"systemctl stop parrot-ipc.socket parrot-ipc.service && rm -r /run/parrot-mcp && mkdir -p {drop_in} && "
            f"printf '[Socket]\\nExecStartPre=\\n' > {drop_in}/no-pre.conf && systemctl daemon-reload && "
            "systemctl start parrot-ipc.socket")
    try:
        d = stat_line(box, "/run/parrot-mcp")
        denied = box.run(f"{CLI} ping --socket {SOCK}", user="parrot-mcp", check=False)
        doctor = box.run(f"{CLI} doctor --socket {SOCK}", check=False)
        row = next((" ".join(ln.split()) for ln in doctor.stdout.splitlines() if ln.startswith("runtime dir")), "")
    finally:
        box.run(f"systemctl stop parrot-ipc.socket parrot-ipc.service && rm -r {drop_in} && systemctl daemon-reload && "
                "systemctl start parrot-ipc.socket")
    fixed = stat_line(box, "/run/parrot-mcp")
    log.note("SocketUser= alone (ExecStartPre= emptied)", f"/run/parrot-mcp {d}; parrot-mcp's ping rc {denied.returncode} "
             f"{[ln for ln in denied.stderr.splitlines() if 'ermission' in ln][:1]}; doctor rc {doctor.returncode}: {row}; shipped unit again: {fixed}")
    assert d == "root:root 700 directory" and denied.returncode != 0 and "ermission denied" in denied.stderr
    assert doctor.returncode == 1 and "but the socket by parrot-mcp" in row
    assert fixed == "parrot-mcp:parrot-mcp 700 directory"


def test_first_connection_starts_the_service_with_its_notify_status(box: Container, log: Transcript) -> None:
    pong = box.out(f"{CLI} ping --socket {SOCK}")
    assert pong.startswith("pong")
    status = wait_for(box, "systemctl status --no-pager parrot-ipc.service", "Status: \"serving:")
    active = next(line.strip() for line in status.splitlines() if line.strip().startswith("Active:"))
    note = next(line.strip() for line in status.splitlines() if line.strip().startswith("Status:"))
    log.note("first connection", f"{pong}; {active}; {note}")
    assert active.startswith("Active: active (running)")
    props = show(box, "parrot-ipc.service", "Type", "NotifyAccess")
    assert props == {"Type": "notify", "NotifyAccess": "main"}


def test_ping_and_two_agents_exchange_a_message(box: Container, log: Transcript) -> None:
    box.run(f"{agent('alice')} register alice && {agent('bob')} register bob")
    sent = box.out(f"{agent('alice')} send bob 'hello from alice'")
    got = json.loads(box.out(f"{agent('bob')} recv --json"))
    log.note("two agents", f"alice: {sent}; bob received {[m['content'] for m in got['messages']]}")
    assert [m["content"] for m in got["messages"]] == ["hello from alice"]
    assert got["messages"][0]["from"] == "alice"


def test_doctor_passes(box: Container, log: Transcript) -> None:
    res = box.run(f"{CLI} doctor --socket {SOCK}", check=False)
    rows = [line for line in res.stdout.splitlines() if line.startswith(("runtime dir", "socket", "ping"))]
    log.note("doctor", f"rc {res.returncode}; " + " | ".join(" ".join(r.split()) for r in rows))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS    /run/parrot-mcp: directory owned by parrot-mcp" in res.stdout  # bug 1


def test_a_parrot_mcp_process_connects(box: Container, log: Transcript) -> None:
    res = box.run(f"{CLI} ping --socket {SOCK}", user="parrot-mcp", check=False)
    log.note("parrot-mcp connects", f"rc {res.returncode}: {res.stdout.strip() or res.stderr.strip()}")
    assert res.returncode == 0 and res.stdout.startswith("pong"), res.stderr  # bug 1: was EACCES


def test_another_user_is_refused(box: Container, log: Transcript) -> None:
    res = box.run(f"{CLI} ping --socket {SOCK}", user=OTHER, check=False)
    why = [ln for ln in (res.stderr + res.stdout).splitlines() if "ermission denied" in ln]
    log.note("another user", f"{OTHER} (uid {box.out(f'id -u {OTHER}')}): rc {res.returncode}: {why[:1]}")
    assert res.returncode != 0
    assert "ermission denied" in res.stderr + res.stdout


def _queue(box: Container, text: str) -> None:
    box.run(f"{agent('alice')} send bob '{text}'")


def _received(box: Container) -> list[str]:
    return [m["content"] for m in json.loads(box.out(f"{agent('bob')} recv --json"))["messages"]]


def test_restart_keeps_queued_mail(box: Container, log: Transcript) -> None:
    _queue(box, "queued before restart")
    before = show(box, "parrot-ipc.service", "MainPID")["MainPID"]
    box.run("systemctl restart parrot-ipc.service")
    after = show(box, "parrot-ipc.service", "MainPID", "ActiveState")
    got = _received(box)
    log.note("systemctl restart", f"MainPID {before} -> {after['MainPID']} ({after['ActiveState']}); bob received {got}")
    assert after["MainPID"] != before
    assert got == ["queued before restart"]


def test_stop_then_a_connection_reactivates(box: Container, log: Transcript) -> None:
    box.run("systemctl stop parrot-ipc.service")
    stopped = show(box, "parrot-ipc.service", "ActiveState")["ActiveState"]
    sock = show(box, "parrot-ipc.socket", "ActiveState")["ActiveState"]
    pong = box.out(f"{CLI} ping --socket {SOCK}")
    again = show(box, "parrot-ipc.service", "ActiveState", "SubState")
    log.note("stop, then connect", f"service {stopped}, socket {sock}; {pong}; service {again['ActiveState']} ({again['SubState']})")
    assert (stopped, sock) == ("inactive", "active")
    assert pong.startswith("pong") and again == {"ActiveState": "active", "SubState": "running"}


def test_sigstop_trips_the_watchdog_and_mail_survives(box: Container, log: Transcript) -> None:
    _queue(box, "queued before SIGSTOP")
    props = show(box, "parrot-ipc.service", "MainPID", "NRestarts", "WatchdogUSec")
    box.run(f"kill -STOP {props['MainPID']}")
    t0 = time.monotonic()
    deadline = t0 + 120
    now = props
    while time.monotonic() < deadline:
        now = show(box, "parrot-ipc.service", "MainPID", "NRestarts", "ActiveState")
        if now["NRestarts"] != props["NRestarts"] and now["ActiveState"] == "active" and now["MainPID"] != "0":
            break
        time.sleep(1)
    waited = time.monotonic() - t0
    journal = box.out("journalctl -u parrot-ipc.service --no-pager -o cat | grep -i watchdog | tail -2")
    got = _received(box)
    log.note("kill -STOP", f"WatchdogUSec={props['WatchdogUSec']}; MainPID {props['MainPID']} -> {now['MainPID']}, "
             f"NRestarts {props['NRestarts']} -> {now['NRestarts']} after {waited:.0f} s; journal: "
             f"{' / '.join(journal.splitlines())}; bob received {got}")
    assert now["NRestarts"] != props["NRestarts"] and now["MainPID"] != props["MainPID"]
    assert "Watchdog timeout" in journal
    assert got == ["queued before SIGSTOP"]


def test_security_exposure_of_the_loaded_unit(box: Container, log: Transcript) -> None:
    out = box.out("systemd-analyze security --no-pager parrot-ipc.service")
    m = re.search(r"Overall exposure level for parrot-ipc\.service:\s*(\d+(?:\.\d+)?)\s*(\w+)", out)
    assert m, out[-2000:]
    log.note("systemd-analyze security", m.group(0))
    assert float(m.group(1)) <= MAX_EXPOSURE


IMPOSSIBLE = '[[peers]]\nname = "root-python-only"\nusers = ["root"]\nexecutables = ["/usr/bin/python3*"]\n'
POSSIBLE = ('[[peers]]\nname = "root"\nusers = ["root"]\n\n[[peers]]\nname = "service-python"\n'
            'users = ["parrot-mcp"]\nexecutables = ["/usr/bin/python3*"]\n')


def use_config(box: Container, text: str) -> None:
    """Write /etc/parrot-ipc/config.toml and make the running broker re-read it (SIGHUP)."""
    box.run("cat > /etc/parrot-ipc/config.toml", input=text)
    since = box.out("date '+%Y-%m-%d %H:%M:%S'")
    box.run("systemctl kill -s HUP parrot-ipc.service")
    wait_for(box, f"journalctl -u parrot-ipc.service -o cat --no-pager --since '{since}'", "config_reloaded", timeout_s=30)


def policy_row(out: str) -> str:
    return next((" ".join(ln.split()) for ln in out.splitlines() if ln.startswith("policy")), "(no policy row)")


def docs_block(doc: str, heading: str) -> str:
    """The first ```sh block after ``heading`` in docs/``doc``."""
    text = (REPO / "docs" / doc).read_text().split(heading, 1)[1]
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def test_executables_rules_under_the_shipped_unit(box: Container, log: Transcript) -> None:
    """Bug 2: reading a peer's /proc/<pid>/exe needs ptrace read access. Under the shipped unit
    (PrivateUsers=yes) that is nobody's; with the docs' PrivateUsers=no drop-in, parrot-mcp's
    own processes only, never root's. check-config and doctor say so."""
    box.run("cat > /root/impossible.toml && chmod 0644 /root/impossible.toml", input=IMPOSSIBLE)
    check = box.run(f"{CLI} check-config /root/impossible.toml", check=False)
    log.note("check-config, root rule with executables", f"rc {check.returncode}: {check.stderr.strip().splitlines()[:1]}")
    assert check.returncode == 2 and "can never match" in check.stderr and "ptrace" in check.stderr

    use_config(box, IMPOSSIBLE)
    doctor = box.run(f"{CLI} doctor --socket {SOCK}", check=False)
    refused = box.run(f"{CLI} ping --socket {SOCK}", check=False)
    log.note("doctor, same config loaded", f"rc {doctor.returncode}: {policy_row(doctor.stdout)}; root's ping rc {refused.returncode}")
    assert doctor.returncode == 1 and policy_row(doctor.stdout).startswith("policy FAIL root-python-only")
    assert refused.returncode != 0

    box.run("cat > /root/possible.toml && chmod 0644 /root/possible.toml", input=POSSIBLE)
    assert box.run(f"{CLI} check-config /root/possible.toml", check=False).returncode == 0
    use_config(box, POSSIBLE)
    shipped = box.run(f"{CLI} ping --socket {SOCK}", user="parrot-mcp", check=False)
    doctor = box.run(f"{CLI} doctor --socket {SOCK}", check=False)
    log.note("parrot-mcp rule with executables, shipped unit", f"ping rc {shipped.returncode} "
             f"{shipped.stderr.strip()[-60:]!r}; doctor rc {doctor.returncode}: {policy_row(doctor.stdout)[:150]}")
    assert shipped.returncode != 0 and "peer_attestation_failed" in shipped.stderr
    assert doctor.returncode == 1 and "PrivateUsers=yes" in policy_row(doctor.stdout)

    box.run(docs_block("configuration.md", "own agents) needs this drop-in"))  # PrivateUsers=no
    try:
        pong = box.run(f"{CLI} ping --socket {SOCK}", user="parrot-mcp", check=False)
        admitted = box.out("journalctl -u parrot-ipc.service -o cat --no-pager | grep peer_admitted | tail -1")
        doctor = box.run(f"{CLI} doctor --socket {SOCK}", check=False)
        exposure = re.search(r"Overall exposure level for parrot-ipc\.service:\s*(\S+)",
                             box.out("systemd-analyze security --no-pager parrot-ipc.service"))
        event = json.loads(json.loads(admitted)["msg"])
        log.note("parrot-mcp rule with executables, drop-in PrivateUsers=no", f"ping rc {pong.returncode}; "
                 f"peer_admitted rule={event['rule']} uid={event['uid']} exe={event['exe']}; doctor rc {doctor.returncode}: "
                 f"{policy_row(doctor.stdout)}; exposure {exposure and exposure.group(1)}")
        assert pong.returncode == 0, pong.stderr
        assert event["rule"] == "service-python" and event["exe"].startswith("/usr/bin/python3")
        assert doctor.returncode == 0, doctor.stdout
        assert exposure and float(exposure.group(1)) <= MAX_EXPOSURE
    finally:
        box.run("rm -r /etc/systemd/system/parrot-ipc.service.d && systemctl daemon-reload && "
                "systemctl restart parrot-ipc.service")


# --------------------------------------------------------------------------- the audit log (docs)
def docs_audit_pipeline() -> str:
    """The ``peer_refused`` pipeline exactly as docs/operations.md prints it (continuations joined)."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## Read the audit log", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    cmd = block.replace("\\\n", " ")
    return next(line.strip() for line in cmd.splitlines() if "jq " in line)


def test_docs_audit_pipeline_reads_the_journal(box: Container, log: Transcript) -> None:
    """Bug 3: the docs' pipeline survives systemd's own lines in ``journalctl -o cat``; the old
    one (plain ``jq -c``) does not. The refusals it finds are the test above's (root's among them)."""
    pipeline = docs_audit_pipeline()
    res = box.run(pipeline, check=False)
    events = [json.loads(line) for line in res.stdout.splitlines()]
    old = box.run(pipeline.replace("jq -cR 'fromjson? | ", "jq -c '"), check=False)
    log.note("docs' jq pipeline", f"{pipeline!r}: rc {res.returncode}, {len(events)} event(s); last: "
             f"{res.stdout.strip().splitlines()[-1:]}; the old `jq -c` form: rc {old.returncode} {old.stderr.strip()!r}")
    use_config(box, "")
    assert res.returncode == 0, res.stderr
    assert events and {e["event"] for e in events} == {"peer_refused"}
    assert (0, "peer_attestation_failed") in {(e["uid"], e["reason"]) for e in events}
    assert old.returncode != 0 and "parse error" in old.stderr


# --------------------------------------------------------------------------- the user service
USER_SOCK_DIR = "/run/user/{uid}/parrot-mcp"


def as_user(box: Container, cmd: str, *, check: bool = True) -> str:
    """``cmd`` in a real login of the user (``machinectl shell USER@.host``), with the pip
    settings; its output, ending ``rc=N`` unless ``check`` (then N must be 0)."""
    env = " ".join(f"-E {k}={v!r}" for k, v in {**box.env, "SYSTEMD_PAGER": "cat", "SYSTEMD_COLORS": "0"}.items())
    script = cmd.replace("'", "'\\''")
    res = box.run(f"machinectl shell -q {env} {OTHER}@.host /bin/sh -c '{script}; echo \"rc=$?\"'",
                  timeout_s=600 if "install" in cmd else 60)
    out = res.stdout.replace("\r", "")
    m = re.search(r"rc=(\d+)\s*$", out)
    assert m, f"machinectl shell gave no exit code:\n{out}\n{res.stderr}"
    if check:
        assert m.group(1) == "0", f"as {OTHER}: {cmd}\n{out}"
        return out[: m.start()].strip()
    return out.strip()


def test_user_units(box: Container, log: Transcript) -> None:
    uid = box.out(f"id -u {OTHER}")
    own = as_user(box, "loginctl enable-linger", check=False)  # the docs: it needs root
    box.run(f"loginctl enable-linger {OTHER}")  # as root, as the docs say
    linger = box.out(f"ls /var/lib/systemd/linger/{OTHER}")
    log.note("enable-linger", f"as {OTHER}: {' '.join(own.split())!r}; as root: ok, {linger}")
    assert not own.endswith("rc=0") and linger == f"/var/lib/systemd/linger/{OTHER}"
    wait_for(box, f"systemctl is-active user@{uid}.service", "active", timeout_s=60, line=True)
    manager = show(box, f"user@{uid}.service", "ActiveState", "MainPID")
    log.note("user manager", f"loginctl enable-linger {OTHER} (as root): user@{uid}.service {manager}")
    box.run(f"rm -rf ~{OTHER}/parrot-ipc && cp -r {SRC} ~{OTHER}/parrot-ipc && chown -R {OTHER}: ~{OTHER}/parrot-ipc")
    t0 = time.monotonic()
    as_user(box, "cd ~/parrot-ipc && sh deploy/install-user.sh")
    log.note("user install", f"machinectl shell {OTHER}@.host sh deploy/install-user.sh: ok in {time.monotonic() - t0:.0f} s")
    d = stat_line(box, USER_SOCK_DIR.format(uid=uid))
    s = stat_line(box, USER_SOCK_DIR.format(uid=uid) + "/mcp.sock")
    pong = as_user(box, "~/.local/bin/parrot-ipc ping")
    state = as_user(box, "systemctl --user show -p ActiveState -p StatusText parrot-ipc.service")
    log.note("user socket", f"{USER_SOCK_DIR.format(uid=uid)} {d}; mcp.sock {s}; {pong}; {' '.join(state.split())}")
    assert d == f"{OTHER}:{OTHER} 700 directory" and s == f"{OTHER}:{OTHER} 600 socket"
    assert pong.startswith("pong") and "ActiveState=active" in state
    env = "PARROT_IPC_SESSION=~/{0}.session ~/.local/bin/parrot-ipc"
    as_user(box, f"{env.format('u1')} register u1 && {env.format('u2')} register u2 && "
                 f"{env.format('u1')} send u2 'queued before the user restart'")
    before = as_user(box, "systemctl --user show -p MainPID --value parrot-ipc.service")
    as_user(box, "systemctl --user restart parrot-ipc.service")
    after = as_user(box, "systemctl --user show -p MainPID --value parrot-ipc.service")
    got = json.loads(as_user(box, f"{env.format('u2')} recv --json"))
    contents = [m["content"] for m in got["messages"]]
    log.note("user restart", f"MainPID {before} -> {after}; u2 received {contents}")
    assert before != after and contents == ["queued before the user restart"]
