"""``parrot-ipc doctor``: check an installation and say how to fix what is wrong.

Each check is a :class:`Check` row: PASS, WARN (works, but worth a look) or FAIL (the broker
is unsafe or will not serve), with the fix in one line. The rules for the runtime directory
and the socket are the OS layer's own (:func:`parrot_ipc.os.paths.runtime_dir_problem`,
:func:`parrot_ipc.os.paths.socket_file_problem`), so doctor and ``serve`` never disagree; the
state directory is checked with :func:`parrot_ipc.os.files.path_problem`. Every look at the
host goes through :mod:`parrot_ipc.os` (files, host, users); this module only decides.

Paths that describe the host (unit directories, securityfs) are parameters, for tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from ..client.blocking import Client
from ..core.policy import PeerRule
from ..errors import ParrotError, ParrotIpcError
from ..os import files, host, units, users
from ..os import paths as os_paths
from ..store.schema import quick_check
from ..store.sqlite import DB_NAME, default_state_dir
from .attestation import BrokerFacts, never_matches, partly_unattestable

Status = Literal["PASS", "WARN", "FAIL"]

SERVICE_USER: Final = "parrot-mcp"
SYSTEM_CONFIG: Final = "/etc/parrot-ipc/config.toml"
UNITS: Final = ("parrot-ipc.socket", "parrot-ipc.service")
SYSTEM_UNIT_DIRS: Final = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
USER_UNIT_DIRS: Final = ("/etc/systemd/user", "/usr/lib/systemd/user", "~/.config/systemd/user")
SECURITYFS: Final = "/sys/kernel/security"
APPARMOR_PROFILE: Final = "parrot-ipc"
PING_TIMEOUT_S: Final = 2.0
START_FIX: Final = "start the broker: systemctl start parrot-ipc.socket (or parrot-ipc serve)"
SERVICE_UNIT: Final = "parrot-ipc.service"
#: The unit settings that decide which peers the broker can see and attest (systemd.exec(5)).
UNIT_PROPS: Final = ("User", "PrivateUsers", "ProtectProc", "CapabilityBoundingSet")
RulesLoader = Callable[[Path | None], Sequence[PeerRule] | None]
UnitReader = Callable[..., dict[str, str] | None]


@dataclass(frozen=True)
class Check:
    """One row of the report: what was checked, the verdict, what was found, how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _user(uid: int) -> str:
    """``name (uid)``, or just the uid if no user has it."""
    name = users.user_name(uid)
    return str(uid) if name is None else f"{name} ({uid})"


def _allowed_owners(euid: int) -> list[int]:
    """Who may own the runtime and state directories: us, and the service user if it exists."""
    service = users.uid_of(SERVICE_USER)
    return [euid] if service is None else [euid, service]


def _runtime_owners(euid: int) -> list[int]:
    """Who may own the runtime directory and socket: :func:`_allowed_owners`, and root (a
    root-owned 0700 directory is root's broker, safe though this user cannot reach it)."""
    owners = _allowed_owners(euid)
    return owners if 0 in owners else [*owners, 0]


def _denied(name: str, path: str, exc: OSError, euid: int) -> Check:
    """The WARN row for a path this user may not even look at (EACCES on lstat(2)): typically
    root's broker seen by another user, whose 0700 runtime directory hides the socket."""
    return Check(name, "WARN", f"cannot check {path} as uid {euid}: {exc.strerror}",
                 "run 'sudo parrot-ipc doctor' to check this broker; to use it as this user, ask its admin "
                 "for a [[peers]] rule and socket group (docs/operations.md), or run your own: parrot-ipc serve")


def _lstat(path: str) -> os.stat_result | None:
    """lstat(2) of ``path``, or None if it is missing or cannot be looked at."""
    try:
        return files.lstat_or_none(path)
    except OSError:
        return None


def _expected_owner(path: str, owners: Sequence[int]) -> int:
    """The owner ``path`` should have: its actual owner if that is allowed, else ``owners[0]``."""
    st = _lstat(path)
    return st.st_uid if st is not None and st.st_uid in owners else owners[0]


def _failed(name: str, problem: str, st: os.stat_result | None, fixable: bool, fix: str, replace: str) -> Check:
    """A FAIL row for a path: start the broker if it is missing, ``fix`` it in place if
    ``fixable`` (only owner or mode wrong), else ``replace`` it."""
    if st is None:
        return Check(name, "FAIL", problem, START_FIX)
    return Check(name, "FAIL", problem, fix if fixable else replace)


# --------------------------------------------------------------------------- checks
def _owner_mismatch(path: str, socket_path: str, owner: int, owners: Sequence[int]) -> Check | None:
    """A FAIL row if the socket belongs to another allowed owner than its directory: what
    ``SocketUser=`` alone gives (systemd makes the directory root's; systemd.socket(5)), where
    the socket's owner cannot reach its own socket."""
    st = _lstat(socket_path)
    if st is None or files.kind_of(st) != "socket" or st.st_uid == owner or st.st_uid not in owners:
        return None
    return Check("runtime dir", "FAIL",
                 f"{path}: directory owned by {_user(owner)} but the socket by {_user(st.st_uid)}, whose "
                 "processes cannot reach it (SocketUser= sets the socket's owner only)",
                 f"chown {st.st_uid}:{st.st_gid} {path}; for the system unit, install systemd/parrot-ipc.socket "
                 "(its ExecStartPre= makes the directory parrot-mcp's)")


def check_runtime_dir(socket_path: str, euid: int) -> Check:
    """The socket's directory: a real directory, mode 0700, owned by us or the service user, and
    by the socket's owner."""
    path = os.path.dirname(os.path.abspath(socket_path))
    owners = _runtime_owners(euid)
    owner = _expected_owner(path, owners)
    try:
        problem = os_paths.runtime_dir_problem(path, owner)
    except OSError as exc:
        return _denied("runtime dir", path, exc, euid)
    if problem is None:
        mismatch = _owner_mismatch(path, socket_path, owner, owners)
        return mismatch or Check("runtime dir", "PASS", f"{path}: directory owned by {_user(owner)}, mode 0700")
    st = _lstat(path)
    return _failed("runtime dir", problem, st, st is not None and files.kind_of(st) == "directory",
                   f"chown {owner} {path} && chmod 0700 {path}",
                   f"inspect and remove it (rm {path}); the broker or systemd recreates a safe directory")


def check_socket(socket_path: str, euid: int) -> Check:
    """The socket file: a socket (not a symlink), mode 0600, owned like its directory."""
    owner = _expected_owner(os.path.dirname(os.path.abspath(socket_path)), _runtime_owners(euid))
    try:
        problem = os_paths.socket_file_problem(socket_path, owner, mode=0o600)
    except OSError as exc:
        return _denied("socket", socket_path, exc, euid)
    if problem is None:
        return Check("socket", "PASS", f"{socket_path}: socket owned by {_user(owner)}, mode 0600")
    st = _lstat(socket_path)
    return _failed("socket", problem, st, st is not None and files.kind_of(st) == "socket" and st.st_uid == owner,
                   f"chmod 0600 {socket_path}, or restart the broker",
                   f"stop the broker, inspect and remove {socket_path}, then start it again")


def check_ping(socket_path: str, safe: bool) -> Check:
    """The broker answers ``ping`` (skipped, WARN, when the path is unsafe)."""
    if not safe:
        return Check("ping", "WARN", "skipped: the runtime directory or socket failed its check",
                     "fix the rows above first")
    t0 = time.perf_counter()
    try:
        with Client(socket_path, timeout_s=PING_TIMEOUT_S) as client:
            reply = client.ping()
    except (ParrotError, OSError) as exc:
        return Check("ping", "FAIL", f"no answer on {socket_path}: {getattr(exc, 'message', exc)}",
                     "systemctl start parrot-ipc.socket (or parrot-ipc serve); then journalctl -u parrot-ipc")
    ms = (time.perf_counter() - t0) * 1000
    if reply != "pong":
        return Check("ping", "FAIL", f"unexpected reply {reply!r}", "is this a parrot-ipc broker?")
    return Check("ping", "PASS", f"pong in {ms:.1f} ms")


def check_config(config: Path | None, euid: int, load_config: Callable[[Path | None], object]) -> Check:
    """The config file parses and validates (``cli.load_config``); also ``$PARROT_MAX_INPUT_SIZE``."""
    if config is None and euid == 0:
        if not host.exists(SYSTEM_CONFIG):
            return Check("config", "WARN", f"{SYSTEM_CONFIG} not found; the system unit passes it to serve",
                         f"install -D -m 0644 /dev/null {SYSTEM_CONFIG}  (an empty file means the defaults)")
        config = Path(SYSTEM_CONFIG)
    try:
        load_config(config)
    except ValueError as exc:
        return Check("config", "FAIL", str(exc), "fix the file or key named; see docs/operations.md")
    return Check("config", "PASS", f"{config}: valid" if config else "no config file; the defaults apply")


def check_state_dir(state_dir: str, euid: int) -> Check:
    """The state directory: a real directory (lstat(2)), no group or other permissions, owned
    by us or the service user (:func:`parrot_ipc.os.files.path_problem`)."""
    st = _lstat(state_dir)
    if st is None:
        return Check("state dir", "WARN", f"{state_dir} does not exist yet",
                     "none needed: StateDirectory= (or the broker) creates it at first start")
    owners = _allowed_owners(euid)
    problem = files.problem(st, files.FileRule("dir", frozenset(owners), 0o077, what="state directory"))
    if problem is None:
        return Check("state dir", "PASS", f"{state_dir}: owned by {_user(st.st_uid)}, mode {st.st_mode & 0o7777:04o}")
    detail = f"state directory {state_dir} {problem}"
    if files.kind_of(st) != "directory":
        return Check("state dir", "FAIL", detail,
                     f"inspect and remove {state_dir}; systemd recreates it (StateDirectory=)")
    return Check("state dir", "FAIL", detail, f"chown {owners[-1]} {state_dir} && chmod 0700 {state_dir}")


def check_database(state_dir: str) -> Check:
    """``PRAGMA quick_check`` on ``<state_dir>/parrot.db``, opened read-only; WARN if absent."""
    db = os.path.join(state_dir, DB_NAME)
    if not host.is_file(db):
        return Check("database", "WARN", f"no {db} (the memory store, or never started)",
                     "none needed unless the broker should be durable")
    found = quick_check(db)
    if found is not None:
        return Check("database", "FAIL", f"{db}: {found}",
                     "stop the broker and restore the last backup (docs/operations.md)")
    return Check("database", "PASS", f"{db}: quick_check ok")


def check_units(system_dirs: Sequence[str] = SYSTEM_UNIT_DIRS, user_dirs: Sequence[str] = USER_UNIT_DIRS) -> Check:
    """``parrot-ipc.socket`` and ``.service`` installed for the system or user manager."""
    for scope, dirs in (("system", system_dirs), ("user", user_dirs)):
        for d in dirs:
            d = os.path.expanduser(d)
            found = [u for u in UNITS if host.is_file(os.path.join(d, u))]
            if len(found) == len(UNITS):
                return Check("units", "PASS", f"{scope} units installed in {d}")
            if found:
                return Check("units", "FAIL", f"only {', '.join(found)} in {d}",
                             f"install both: install -m 0644 systemd/parrot-ipc.socket systemd/parrot-ipc.service {d}/")
    return Check("units", "WARN", "no parrot-ipc units installed",
                 "see docs/operations.md: install -m 0644 systemd/parrot-ipc.{socket,service} /etc/systemd/system/")


def check_lsm(securityfs: str = SECURITYFS) -> Check:
    """AppArmor (and our profile) or Landlock active in the kernel (``/sys/kernel/security``)."""
    try:
        lsms = host.read_text(os.path.join(securityfs, "lsm")).strip().split(",")
    except OSError:
        lsms = []
    apparmor = "apparmor" in lsms or host.is_dir(os.path.join(securityfs, "apparmor"))
    if apparmor:
        try:
            profiles = host.read_text(os.path.join(securityfs, "apparmor", "profiles")).splitlines()
        except OSError as exc:
            return Check("lsm", "WARN", f"AppArmor active; cannot read its profiles: {exc.strerror}",
                         "run doctor as root to see whether the parrot-ipc profile is loaded")
        mine = [p for p in profiles if p.split(" ", 1)[0] == APPARMOR_PROFILE]
        if mine:
            return Check("lsm", "PASS", f"AppArmor active; profile {mine[0]}")
        return Check("lsm", "WARN", f"AppArmor active but profile {APPARMOR_PROFILE} is not loaded "
                     "(the unit's AppArmorProfile= will fail)",
                     "install -m 0644 apparmor/parrot-ipc /etc/apparmor.d/ && apparmor_parser -r /etc/apparmor.d/parrot-ipc")
    if "landlock" in lsms:
        return Check("lsm", "PASS", "Landlock active (AppArmor is not)")
    return Check("lsm", "WARN", f"neither AppArmor nor Landlock is active ({securityfs})",
                 "boot with lsm=...,apparmor (or landlock); the systemd sandbox still applies")


#: Consumer lag (messages not yet delivered or acked) past which doctor warns.
MAX_RELAY_LAG: Final = 1000


def check_relay(config: Path | None) -> Check | None:
    """The relay (docs/federation.md): NATS reachable, stream present, consumer lag; None when
    the config (``config``, or the default one) has no ``[server] node`` (no federation) or
    cannot be loaded (the config row says why)."""
    from ..client.relay import probe
    from . import config_file, relay_cmd

    try:
        loaded = config_file.load_config(config, explicit=config is not None)
    except ParrotIpcError:
        return None
    if loaded.server.node is None:
        return None
    fix = "start it: systemctl start parrot-ipc-relay (or parrot-ipc relay)"
    try:
        settings = relay_cmd.settings_from(loaded, None, None, None)
    except ParrotIpcError as exc:
        return Check("relay", "FAIL", str(exc), "fix the [relay] table or the credentials file's owner and mode (0600)")
    found = probe(settings)
    where = ", ".join(settings.servers)
    if not found.reachable:
        return Check("relay", "FAIL", f"NATS not reachable at {where}: {found.error}",
                     "start nats-server or fix [relay] servers, TLS and credentials")
    if not found.stream:
        return Check("relay", "FAIL", f"JetStream stream {settings.stream} is missing at {where}",
                     f"{fix}; it creates the stream (create_stream = true), or create it with subjects parrot.>")
    if not found.consumer:
        return Check("relay", "WARN", f"no consumer parrot-{settings.node} yet: the relay never ran", fix)
    if found.lag > MAX_RELAY_LAG:
        return Check("relay", "WARN", f"consumer parrot-{settings.node} lags by {found.lag} message(s)",
                     f"{fix}; check its log (journalctl -u parrot-ipc-relay)")
    return Check("relay", "PASS", f"NATS at {where}, stream {settings.stream}, lag {found.lag}")


def broker_facts(euid: int, read_unit: UnitReader = units.unit_properties) -> BrokerFacts:
    """What the broker may see of its peers: from the loaded ``parrot-ipc.service`` (the system
    manager's as root, else the user manager's), else a plain process (the service user's if
    we are root and it exists, else ours)."""
    props = read_unit(SERVICE_UNIT, UNIT_PROPS, user=euid != 0)
    if props is None:
        uid = (users.uid_of(SERVICE_USER) if euid == 0 else None)
        uid = euid if uid is None else uid
        return BrokerFacts.of_process(uid, f"a broker running as UID {uid} (no loaded {SERVICE_UNIT})")
    name = props.get("User", "")
    uid = euid if not name else (users.uid_of(name) if not name.isdigit() else int(name))
    return BrokerFacts.of_unit(props, euid if uid is None else uid, f"the loaded {SERVICE_UNIT}")


def check_policy(rules: Sequence[PeerRule] | None, facts: BrokerFacts) -> Check:
    """The ``[[peers]]`` rules against what the broker can see (:mod:`parrot_ipc.app.attestation`):
    FAIL if a rule can never match, WARN if it will always refuse some of the UIDs it names."""
    if rules is None:
        return Check("policy", "PASS", f"default policy: root and UID {facts.uid}; nothing to attest")
    never = [r for r in (never_matches(rule, facts) for rule in rules) if r]
    if never:
        return Check("policy", "FAIL", "; ".join(never),
                     "drop executables/bind from those rules, or run the broker so it can attest them "
                     "(docs/configuration.md, 'Which peers can be attested')")
    partly = [f"{rule.label}: UIDs {', '.join(map(str, uids))}" for rule in rules
              if (uids := partly_unattestable(rule, facts))]
    if partly:
        return Check("policy", "WARN", f"always refused under {facts.source}: {'; '.join(partly)}",
                     "see docs/configuration.md, 'Which peers can be attested'")
    return Check("policy", "PASS", f"{len(rules)} rule(s), each can match under {facts.source}")


def _policy_row(config: Path | None, euid: int, load_rules: RulesLoader | None, config_ok: bool) -> list[Check]:
    """The ``policy`` row, if rules can be loaded (none without a loader)."""
    if load_rules is None:
        return []
    if not config_ok:
        return [Check("policy", "WARN", "skipped: the config failed its check", "fix it first")]
    if config is None and euid == 0 and host.exists(SYSTEM_CONFIG):
        config = Path(SYSTEM_CONFIG)
    return [check_policy(load_rules(config), broker_facts(euid))]


def run_checks(socket_path: str, *, state_dir: str | None = None, config: Path | None = None,
               load_config: Callable[[Path | None], object], euid: int | None = None,
               system_unit_dirs: Sequence[str] = SYSTEM_UNIT_DIRS,
               user_unit_dirs: Sequence[str] = USER_UNIT_DIRS, securityfs: str = SECURITYFS,
               load_rules: RulesLoader | None = None) -> list[Check]:
    """All checks, in report order. Reads only; connects to the socket once (``ping``).
    ``load_rules(config)`` gives the config's ``[[peers]]`` rules for the ``policy`` row."""
    euid = users.effective_uid() if euid is None else euid
    state = state_dir or default_state_dir(euid)
    rows = [check_runtime_dir(socket_path, euid), check_socket(socket_path, euid)]
    rows.append(check_ping(socket_path, safe=all(r.status == "PASS" for r in rows)))
    rows.append(check_config(config, euid, load_config))
    config_status = rows[-1].status
    rows += _policy_row(config, euid, load_rules, config_status != "FAIL")
    relay = check_relay(config) if config_status == "PASS" else None
    if relay is not None:
        rows.append(relay)
    rows.append(check_state_dir(state, euid))
    if rows[-1].status == "FAIL":
        rows.append(Check("database", "WARN", "skipped: the state directory failed its check", "fix it first"))
    else:
        rows.append(check_database(state))
    rows.append(check_units(system_unit_dirs, user_unit_dirs))
    rows.append(check_lsm(securityfs))
    return rows


def render(rows: Sequence[Check]) -> str:
    """A fixed-width table: CHECK, STATUS, DETAIL, and a ``fix:`` line under each non-PASS row."""
    w = max(len("CHECK"), *(len(r.name) for r in rows))
    lines = [f"{'CHECK':<{w}}  STATUS  DETAIL"]
    for r in rows:
        lines.append(f"{r.name:<{w}}  {r.status:<6}  {r.detail}")
        if r.status != "PASS" and r.fix:
            lines.append(f"{'':<{w}}  {'':<6}  fix: {r.fix}")
    return "\n".join(lines)


def as_dict(rows: Sequence[Check]) -> dict[str, Any]:
    """``{"ok": no FAIL, "checks": [{"name", "status", "detail", "fix"}, ...]}`` for ``--json``."""
    return {"ok": not failed(rows), "checks": [asdict(r) for r in rows]}


def failed(rows: Sequence[Check]) -> bool:
    """True if any row is FAIL (doctor then exits 1)."""
    return any(r.status == "FAIL" for r in rows)
