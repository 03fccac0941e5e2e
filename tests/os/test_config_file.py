"""The config file on disk (TOML, ownership and mode checks, names resolved, the shared-secret
file), and the OS layer's process attestation (/proc/<pid>/exe and start time, SO_PEERGROUPS).

Real files under ``tmp_path`` and real processes; nothing under /etc is read.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parrot_ipc.app import config_file
from parrot_ipc.app.config_file import describe, load_config
from parrot_ipc.core import DefaultPolicy, PeerCredentials, RulePolicy
from parrot_ipc.core.config import BrokerConfig
from parrot_ipc.core.policy import DEFAULT_SCOPES
from parrot_ipc.errors import ConfigError
from parrot_ipc.os import peer as os_peer

NOGROUP_GID = grp.getgrnam("nogroup").gr_gid
SECRET_TEXT = "correct-horse-battery-staple-7f3a"

VALID = """
[server]
socket = "/srv/parrot/mcp.sock"
socket_group = "nogroup"
max_frame_bytes = 4096
token_ttl_s = 3600

[[peers]]
name = "admins"
users = ["root"]
scopes = ["send", "receive", "list", "admin"]
bind = "process"

[[peers]]
uids = [1234]
groups = ["nogroup", "root"]
gids = [4321]
executables = ["/usr/bin/node", "/usr/bin/python3*"]
may_send_to = ["team-*"]
"""


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def load(path: Path, **kwargs: object) -> config_file.LoadedConfig:
    """load_config with an empty environment (no PARROT_MAX_INPUT_SIZE from the test runner)."""
    kwargs.setdefault("env", {})
    return load_config(path, **kwargs)  # type: ignore[arg-type]


def load_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# =========================================================================== valid files
def test_a_valid_file_loads_with_names_resolved(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", VALID)
    cfg = load(path)
    assert cfg.path == path
    assert cfg.server.socket == "/srv/parrot/mcp.sock"
    assert cfg.server.max_frame_bytes == 4096
    assert cfg.server.token_ttl_s == 3600.0
    assert cfg.server.lease_s == BrokerConfig().lease_s  # unset keys keep their defaults
    assert cfg.socket_gid == NOGROUP_GID
    assert cfg.shared_secret is None
    assert cfg.rules is not None and len(cfg.rules) == 2
    admins, second = cfg.rules
    assert admins.label == "admins"
    assert admins.uids == frozenset({pwd.getpwnam("root").pw_uid})
    assert admins.gids == frozenset()
    assert admins.scopes == frozenset({"send", "receive", "list", "admin"})
    assert admins.bind == "process" and admins.may_send_to == ("*",) and admins.executables == ()
    assert second.label == "peers[1]"
    assert second.uids == frozenset({1234})
    assert second.gids == frozenset({NOGROUP_GID, grp.getgrnam("root").gr_gid, 4321})
    assert second.executables == ("/usr/bin/node", "/usr/bin/python3*")
    assert second.scopes == DEFAULT_SCOPES
    assert second.may_send_to == ("team-*",) and second.bind == "uid"

    assert isinstance(cfg.policy, RulePolicy)
    assert cfg.policy.rules == cfg.rules
    assert cfg.policy.admit(PeerCredentials(pid=1, uid=0, gid=0, start_time=1)).rule == "admins"
    member = PeerCredentials(pid=2, uid=1234, gid=1234, groups=(NOGROUP_GID,), exe="/usr/bin/python3.11")
    assert cfg.policy.admit(member).rule == "peers[1]"
    assert not cfg.policy.admit(PeerCredentials(pid=3, uid=1234, gid=1234, exe="/usr/bin/python3")).allowed


def test_a_file_without_peers_keeps_the_default_policy(tmp_path: Path) -> None:
    cfg = load(write(tmp_path / "c.toml", "[server]\nmax_frame_bytes = 2048\n"), broker_uid=1000)
    assert cfg.path is not None and cfg.server.max_frame_bytes == 2048
    assert cfg.rules is None
    assert isinstance(cfg.policy, DefaultPolicy) and cfg.policy.broker_uid == 1000


def test_an_empty_file_is_all_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path / "c.toml", ""))
    assert cfg.server == BrokerConfig()
    assert cfg.rules is None and isinstance(cfg.policy, DefaultPolicy)


def test_an_empty_peers_list_refuses_everyone(tmp_path: Path) -> None:
    cfg = load(write(tmp_path / "c.toml", "peers = []\n"))
    assert cfg.rules == ()
    assert isinstance(cfg.policy, RulePolicy)
    assert not cfg.policy.admit(PeerCredentials(pid=1, uid=0, gid=0)).allowed


# =========================================================================== invalid files
@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("[server]\nbogus = 1\n", ["bogus", "$.server"]),
        ("[server]\nmax_frame_byte = 1\n", ["max_frame_byte", "$.server"]),
        ("[[peers]]\nuids = [0]\n[[peers]]\nuids = [1]\nfoo = true\n", ["foo", "$.peers[1]"]),
        ("[[peers]]\nuid = [0]\n", ["uid", "$.peers[0]"]),
        ("[client]\nsocket = \"/x\"\n", ["client"]),
    ],
    ids=["server", "server_typo", "peers", "peers_typo", "top_level"],
)
def test_unknown_key_is_an_error_naming_it(tmp_path: Path, text: str, names: list[str]) -> None:
    msg = load_error(write(tmp_path / "c.toml", text))
    assert str(tmp_path / "c.toml") in msg
    for name in names:
        assert name in msg, msg


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[server]\nmax_frame_bytes = "big"\n', "$.server.max_frame_bytes", "int"),
        ('[server]\nmax_frame_bytes = "4096"\n', "$.server.max_frame_bytes", "int"),
        ('[server]\ntoken_ttl_s = "3600"\n', "$.server.token_ttl_s", "float"),
        ("[server]\nmax_frame_bytes = 4096.5\n", "$.server.max_frame_bytes", "int"),
        ("[server]\nsocket = 5\n", "$.server.socket", "str"),
        ("server = 5\n", "$.server", "object"),
        ('[[peers]]\nuids = "0"\n', "$.peers[0].uids", "array"),
        ('[[peers]]\nuids = ["0"]\n', "$.peers[0].uids[0]", "int"),
        ("[[peers]]\nuids = [0]\nbind = 1\n", "$.peers[0].bind", "str"),
    ],
    ids=["int_word", "int_as_string", "float_as_string", "int_as_float", "str_as_int", "table_as_int",
         "array_as_string", "uid_as_string", "enum_as_int"],
)
def test_wrong_type_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    msg = load_error(write(tmp_path / "c.toml", text))
    assert key in msg, msg
    assert expected in msg, msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[peers]]\nuids = [0]\nscopes = ["send", "fly"]\n', "$.peers[0].scopes[1]"),
        ('[[peers]]\nuids = [0]\nbind = "thread"\n', "$.peers[0].bind"),
        ("[[peers]]\nuids = [-1]\n", "$.peers[0].uids[0]"),
        ('[[peers]]\nuids = [0]\nexecutables = ["python3"]\n', "$.peers[0].executables[0]"),
        ('[[peers]]\nuids = [0]\nmay_send_to = [""]\n', "$.peers[0].may_send_to[0]"),
        ("[server]\nmax_frame_bytes = 0\n", "$.server.max_frame_bytes"),
        ("[server]\nlease_s = -1\n", "$.server.lease_s"),
    ],
    ids=["scope", "bind", "negative_uid", "relative_exe", "empty_pattern", "zero_frame", "negative_lease"],
)
def test_bad_value_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert key in load_error(write(tmp_path / "c.toml", text))


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    msg = load_error(write(tmp_path / "c.toml", "[server\n"))
    assert "TOML" in msg and str(tmp_path / "c.toml") in msg


@pytest.mark.parametrize(
    ("text", "where", "name"),
    [
        ('[[peers]]\nusers = ["root", "no-such-user-pipc"]\n', "peers[0]", "no such user 'no-such-user-pipc'"),
        ('[[peers]]\nuids = [0]\n[[peers]]\ngroups = ["no-such-group-pipc"]\n', "peers[1]",
         "no such group 'no-such-group-pipc'"),
        ('[server]\nsocket_group = "no-such-group-pipc"\n', "server.socket_group",
         "no such group 'no-such-group-pipc'"),
    ],
    ids=["user", "group", "socket_group"],
)
def test_unknown_user_or_group_is_named(tmp_path: Path, text: str, where: str, name: str) -> None:
    msg = load_error(write(tmp_path / "c.toml", text))
    assert where in msg and name in msg, msg


@pytest.mark.parametrize("text", [
    "[[peers]]\n",
    '[[peers]]\nscopes = ["send"]\nexecutables = ["/usr/bin/python3"]\n',
    "[[peers]]\nusers = []\nuids = []\ngroups = []\ngids = []\n",
])
def test_a_rule_that_names_nobody_is_an_error(tmp_path: Path, text: str) -> None:
    msg = load_error(write(tmp_path / "c.toml", text))
    assert "peers[0]" in msg
    assert "users, uids, groups, gids" in msg


def test_a_config_writable_by_group_or_others_is_refused(tmp_path: Path) -> None:
    for mode in (0o664, 0o646, 0o666):
        path = write(tmp_path / "c.toml", VALID, mode)
        msg = load_error(path)
        assert str(path) in msg
        assert f"mode {mode:04o}" in msg and f"uid {os.geteuid()}" in msg, msg
    # Readable by others is fine; only writing matters.
    assert load(write(tmp_path / "ok.toml", VALID, 0o644)).rules


@pytest.mark.root
def test_a_config_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", VALID, 0o644)
    os.chown(path, 65534, -1)
    msg = load_error(path)
    assert "owned by uid 65534" in msg and "mode 0644" in msg and str(path) in msg
    # A file owned by the broker's own (non-root) uid is accepted.
    assert load(path, broker_uid=65534).rules


def test_a_config_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    assert "not a regular file" in load_error(tmp_path / "dir.toml")


def test_a_config_that_is_a_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    real = write(tmp_path / "real.toml", VALID)
    link = tmp_path / "c.toml"
    link.symlink_to(real)
    msg = load_error(link)
    assert f"config {link} is a symlink" in msg and "not a regular file" in msg
    # The default location is checked the same way: a symlink there is not "missing".
    with pytest.raises(ConfigError, match="is a symlink"):
        load(link, explicit=False)


def test_a_fifo_config_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo, 0o644)
    child = subprocess.run(  # in a child with a timeout: a blocking open(2) of a FIFO would hang
        [sys.executable, "-c", "import sys; from pathlib import Path; from parrot_ipc.app.config_file import "
         "load_config\ntry:\n    load_config(Path(sys.argv[1]), env={})\nexcept ValueError as e:\n    print(e)",
         str(fifo)], capture_output=True, text=True, timeout=20)
    assert child.returncode == 0, child.stderr
    assert f"config {fifo} is a FIFO" in child.stdout and "not a regular file" in child.stdout


def test_a_hard_linked_config_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", VALID)
    os.link(path, tmp_path / "other-name.toml")
    assert "must have exactly one hard link; found 2" in load_error(path)


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    msg = load_error(tmp_path / "absent.toml")
    assert str(tmp_path / "absent.toml") in msg and "cannot read config" in msg


def test_a_missing_default_file_gives_the_default_policy(tmp_path: Path) -> None:
    cfg = load(tmp_path / "absent.toml", explicit=False, broker_uid=1000)
    assert cfg.path is None
    assert cfg.rules is None
    assert type(cfg.policy) is DefaultPolicy
    assert cfg.server == BrokerConfig() and cfg.shared_secret is None and cfg.socket_gid is None


def test_load_config_none_reads_the_default_path_only_if_it_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(config_file, "DEFAULT_CONFIG_PATH", default)
    cfg = load_config(None, env={})
    assert cfg.path is None and cfg.rules is None and isinstance(cfg.policy, DefaultPolicy)
    # Once the default file exists it is read (and checked like any other).
    default.parent.mkdir()
    write(default, VALID)
    cfg = load_config(None, env={})
    assert cfg.path == default and isinstance(cfg.policy, RulePolicy)
    default.chmod(0o666)
    with pytest.raises(ConfigError, match="mode 0666"):
        load_config(None, env={})


def test_a_present_default_file_is_still_validated(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "[server]\nnope = 1\n")
    with pytest.raises(ConfigError, match="nope"):
        load(path, explicit=False)


# =========================================================================== PARROT_MAX_INPUT_SIZE
def test_parrot_max_input_size_overrides_max_frame_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", VALID)
    assert load(path, env={"PARROT_MAX_INPUT_SIZE": "1234"}).server.max_frame_bytes == 1234
    assert load(path, env={}).server.max_frame_bytes == 4096
    # Without any file, too.
    cfg = load(tmp_path / "absent.toml", explicit=False, env={"PARROT_MAX_INPUT_SIZE": "777"})
    assert cfg.server.max_frame_bytes == 777 and cfg.rules is None
    # An empty value is as if unset.
    assert load(path, env={"PARROT_MAX_INPUT_SIZE": ""}).server.max_frame_bytes == 4096


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_a_bad_parrot_max_input_size_is_a_config_error(tmp_path: Path, value: str) -> None:
    msg = load_error(tmp_path / "absent.toml", explicit=False, env={"PARROT_MAX_INPUT_SIZE": value})
    assert "PARROT_MAX_INPUT_SIZE" in msg or "max_frame_bytes" in msg, msg


# =========================================================================== shared_secret_file
def secret_config(tmp_path: Path, secret_path: Path) -> Path:
    return write(tmp_path / "c.toml", f'[server]\nshared_secret_file = "{secret_path}"\n')


def test_shared_secret_file_0600_is_loaded_and_stripped(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret", f"  {SECRET_TEXT}\n\n", 0o600)
    cfg = load(secret_config(tmp_path, secret))
    assert cfg.shared_secret == SECRET_TEXT.encode()
    write(secret, SECRET_TEXT, 0o400)  # read-only for the owner is fine too
    assert load(secret_config(tmp_path, secret)).shared_secret == SECRET_TEXT.encode()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_shared_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    secret = write(tmp_path / "secret", SECRET_TEXT, mode)
    msg = load_error(secret_config(tmp_path, secret))
    assert str(secret) in msg and f"mode {mode:04o}" in msg
    assert SECRET_TEXT not in msg


@pytest.mark.root
def test_shared_secret_file_owned_by_another_uid_is_refused(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret", SECRET_TEXT, 0o600)
    os.chown(secret, 65534, -1)
    msg = load_error(secret_config(tmp_path, secret))
    assert "uid 65534" in msg and SECRET_TEXT not in msg


def test_shared_secret_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = write(tmp_path / "real-secret", SECRET_TEXT, 0o600)
    link = tmp_path / "secret"
    link.symlink_to(real)
    msg = load_error(secret_config(tmp_path, link))
    assert str(link) in msg and SECRET_TEXT not in msg


@pytest.mark.parametrize("content", ["", " \n\t\n"], ids=["empty", "whitespace"])
def test_an_empty_shared_secret_file_is_refused(tmp_path: Path, content: str) -> None:
    secret = write(tmp_path / "secret", content, 0o600)
    msg = load_error(secret_config(tmp_path, secret))
    assert "empty" in msg and str(secret) in msg


def test_a_missing_shared_secret_file_is_refused(tmp_path: Path) -> None:
    assert str(tmp_path / "nope") in load_error(secret_config(tmp_path, tmp_path / "nope"))


def test_describe_shows_the_policy_but_no_secret(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret", SECRET_TEXT, 0o600)
    path = write(tmp_path / "c.toml", VALID.replace("[server]\n", f'[server]\nshared_secret_file = "{secret}"\n'))
    cfg = load(path)
    assert cfg.shared_secret == SECRET_TEXT.encode()
    out = describe(cfg)
    text = json.dumps(out)
    assert SECRET_TEXT not in text
    assert SECRET_TEXT.encode().hex() not in text
    assert out["shared_secret"] is True
    assert out["config"] == str(path)
    assert [r["rule"] for r in out["peers"]] == ["admins", "peers[1]"]
    assert out["peers"][0]["uids"] == [0] and out["peers"][0]["bind"] == "process"
    assert out["peers"][1]["executables"] == ["/usr/bin/node", "/usr/bin/python3*"]
    assert out["server"]["max_frame_bytes"] == 4096


def test_describe_of_the_defaults(tmp_path: Path) -> None:
    out = describe(load(tmp_path / "absent.toml", explicit=False), broker_uid=1000)
    assert out["config"] is None and out["policy"] == "default" and out["shared_secret"] is False
    assert [r["uids"] for r in out["peers"]] == [[0], [1000]]


# =========================================================================== oslayer attestation
def field22(pid: int) -> int:
    """Field 22 (starttime) of /proc/<pid>/stat, parsed from the right: the last 52 - 22 fields
    follow it, whatever spaces or parentheses ``comm`` holds."""
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    total = 52  # proc(5): fields 1..52 on Linux 3.5+
    assert len(fields) >= total
    return int(fields[len(fields) - (total - 22) - 1])


def test_process_start_time_of_ourselves_is_field_22() -> None:
    start = os_peer.process_start_time(os.getpid())
    assert isinstance(start, int) and start > 0
    assert start == field22(os.getpid())
    assert os_peer.process_start_time(os.getpid()) == start  # stable


def test_process_start_time_survives_a_hostile_comm() -> None:
    """comm (field 2) may contain spaces and ')': the parse must not shift."""
    code = ("open('/proc/self/comm', 'w').write(') 1 2 (x) 3'); import sys; "
            "print('ready', flush=True); sys.stdin.read()")
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            assert Path(f"/proc/{child.pid}/comm").read_text().startswith(") 1 2 (x)")
            assert os_peer.process_start_time(child.pid) == field22(child.pid)
            assert os_peer.process_start_time(child.pid) >= os_peer.process_start_time(os.getpid())
        finally:
            child.communicate("")


def test_process_start_time_of_a_gone_process_raises_oserror() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(OSError):
        os_peer.process_start_time(child.pid)


def test_attest_process_of_ourselves() -> None:
    want = os.path.realpath(sys.executable)
    exe, start, error = os_peer.attest_process(os.getpid(), None)
    assert (exe, start, error) == (want, os_peer.process_start_time(os.getpid()), None)
    fd = os.pidfd_open(os.getpid())
    try:
        assert os_peer.attest_process(os.getpid(), fd) == (want, start, None)
    finally:
        os.close(fd)


def test_attest_process_of_a_reaped_child_fails() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    exe, start, error = os_peer.attest_process(child.pid, None)
    assert exe is None and start is None
    assert isinstance(error, str) and error


def test_attest_process_with_the_pidfd_of_a_reaped_child_fails() -> None:
    child = subprocess.Popen(["sleep", "30"])
    fd = os.pidfd_open(child.pid)
    try:
        child.kill()
        child.wait()
        exe, start, error = os_peer.attest_process(child.pid, fd)
    finally:
        os.close(fd)
    assert (exe, start) == (None, None) and error


@pytest.mark.parametrize("pid", [0, -1])
def test_attest_process_without_a_pid_fails(pid: int) -> None:
    exe, start, error = os_peer.attest_process(pid, None)
    assert (exe, start) == (None, None) and error and "pid" in error


def test_identify_peer_on_a_socketpair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        cred = os_peer.identify_peer(a)
    assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert cred.exe == os.path.realpath(sys.executable)
    assert cred.start_time == os_peer.process_start_time(os.getpid())
    assert cred.attest_error is None
    assert os.getegid() not in cred.groups
    assert set(cred.groups) == set(os.getgroups()) - {os.getegid()}


@pytest.mark.root
def test_identify_peer_of_a_child_reports_its_supplementary_groups(tmp_path: Path) -> None:
    """A real connecting process with groups {primary, nogroup}: SO_PEERGROUPS minus the primary."""
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(10)
    code = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.recv(1)")
    with listener, subprocess.Popen([sys.executable, "-c", code, path],
                                    extra_groups=[os.getegid(), NOGROUP_GID]) as child:
        conn, _ = listener.accept()
        with conn:
            cred = os_peer.identify_peer(conn)
            conn.sendall(b"x")
        child.wait(10)
    assert cred.pid == child.pid
    assert cred.gid == os.getegid()
    assert cred.groups == (NOGROUP_GID,)
    assert cred.exe == os.path.realpath(sys.executable)
    assert cred.start_time is not None and cred.attest_error is None
