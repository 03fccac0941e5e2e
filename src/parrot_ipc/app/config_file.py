"""Loading the config file: TOML, decoded by msgspec into typed Structs, names resolved.

Default path ``/etc/parrot-ipc/config.toml`` (read only if it exists); ``--config`` sets another.
The file must be a regular file (not a symlink: it is opened with ``O_NOFOLLOW``, open(2)) with
one hard link, owned by root or the broker's user and not writable by group or others (it
decides who may talk to the broker); :mod:`parrot_ipc.os.files` checks that on the open
descriptor. User and group names are resolved by :mod:`parrot_ipc.os.users`. An unknown key or a wrong type is an error naming the key
(msgspec's ``$.peers[0].scopes[1]`` paths). ``PARROT_MAX_INPUT_SIZE`` overrides
``max_frame_bytes`` (the Parrot IPC security guide's variable).
"""

from __future__ import annotations

import errno
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from ..core.config import BrokerConfig, ConfigFile, PeerRuleConfig, RelayConfig
from ..core.policy import (
    DefaultPolicy,
    PeerRule,
    Policy,
    RemoteRule,
    RemoteRules,
    RulePolicy,
    remote_rules_of,
)
from ..errors import ConfigError, StartupError, UnsafeFile
from ..os import users
from ..os.files import policy_file_rule, read_checked, read_private_file
from .attestation import BrokerFacts, never_matches

DEFAULT_CONFIG_PATH: Final = Path("/etc/parrot-ipc/config.toml")
#: The largest config file read, in bytes (a config is a few KiB; this bounds a mistake).
MAX_CONFIG_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class LoadedConfig:
    """A config ready to use.

    Attributes:
        path: the file read, or None when no file was read (the defaults).
        server: the ``[server]`` settings (``PARROT_MAX_INPUT_SIZE`` applied).
        rules: the ``[[peers]]`` rules with numeric UIDs/GIDs, or None (no ``peers`` key: the
            default policy).
        policy: the policy to admit peers with (:class:`RulePolicy` or :class:`DefaultPolicy`).
        socket_gid: the GID of ``server.socket_group``, or None.
        shared_secret: the stripped bytes of ``server.shared_secret_file``, or None.
        relay: the ``[relay]`` table (``parrot-ipc relay`` reads it).
    """

    path: Path | None
    server: BrokerConfig
    rules: tuple[PeerRule, ...] | None
    policy: Policy
    socket_gid: int | None
    shared_secret: bytes | None
    relay: RelayConfig = field(default_factory=RelayConfig)


def _uid_of(name: str, where: str) -> int:
    uid = users.uid_of(name)
    if uid is None:
        raise ConfigError(f"{where}: no such user {name!r}")
    return uid


def _gid_of(name: str, where: str) -> int:
    gid = users.gid_of(name)
    if gid is None:
        raise ConfigError(f"{where}: no such group {name!r}")
    return gid


def resolve_rule(rule: PeerRuleConfig, index: int, origin: str) -> PeerRule:
    """Turn one ``[[peers]]`` table into a :class:`PeerRule` with numeric UIDs and GIDs.

    ``index`` is the table's position (for the label ``peers[<index>]`` and errors); ``origin``
    is the config path as errors show it.

    Raises:
        ConfigError: the table names nobody (no users, uids, groups or gids), or names a user
            or group that does not exist (getpwnam(3), getgrnam(3)).
    """
    where = f"{origin}: peers[{index}]"
    if not (rule.users or rule.uids or rule.groups or rule.gids):
        raise ConfigError(f"{where}: give at least one of users, uids, groups, gids")
    uids = frozenset(rule.uids) | {_uid_of(u, where) for u in rule.users}
    gids = frozenset(rule.gids) | {_gid_of(g, where) for g in rule.groups}
    return PeerRule(
        label=rule.name or f"peers[{index}]",
        uids=frozenset(uids), gids=frozenset(gids),
        executables=tuple(rule.executables), scopes=frozenset(rule.scopes),
        may_send_to=tuple(rule.may_send_to), bind=rule.bind, names=tuple(rule.names),
    )


def _read_doc(path: Path, broker_uid: int, explicit: bool) -> dict[str, Any] | None:
    """The parsed TOML of ``path``, opened once with :func:`read_checked` and read from that
    descriptor (no stat-then-open); None if it is missing and not ``explicit``."""
    try:
        raw = read_checked(path, policy_file_rule(broker_uid, "config"), max_bytes=MAX_CONFIG_BYTES)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not explicit:
            return None
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnsafeFile as exc:
        raise ConfigError(str(exc)) from None
    try:
        return tomllib.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def _apply_env(doc: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``doc`` with ``PARROT_MAX_INPUT_SIZE`` (if set and not empty) as ``server.max_frame_bytes``."""
    max_input = env.get("PARROT_MAX_INPUT_SIZE")
    if not max_input:
        return doc
    try:
        size = int(max_input)
    except ValueError:
        raise ConfigError(f"PARROT_MAX_INPUT_SIZE={max_input!r} is not an integer "
                          f"(it overrides server.max_frame_bytes)") from None
    server_doc = doc.get("server", {})
    if not isinstance(server_doc, dict):  # let msgspec name the wrong type of [server]
        return doc
    return {**doc, "server": {**server_doc, "max_frame_bytes": size}}


def _read_secret(secret_file: str | None, broker_uid: int) -> bytes | None:
    """The stripped shared secret from ``secret_file`` (:func:`read_private_file`), or None."""
    if secret_file is None:
        return None
    try:
        secret = read_private_file(secret_file, broker_uid).strip()
    except StartupError as exc:
        raise ConfigError(str(exc)) from None
    if not secret:
        raise ConfigError(f"secret file {secret_file} is empty")
    return secret


def load_config(path: Path | None = None, *, broker_uid: int | None = None,
                env: Mapping[str, str] | None = None, explicit: bool = True) -> LoadedConfig:
    """Read, check and resolve the config.

    The file is opened once (:func:`parrot_ipc.os.files.read_checked`: ``O_NOFOLLOW``, fstat(2)
    on the descriptor) and must be a regular file with one hard link, owned by root or
    ``broker_uid``, not writable by group or others, at most :data:`MAX_CONFIG_BYTES` bytes. A
    symlink or a FIFO in its place is refused at once.

    Args:
        path: the file; None means :data:`DEFAULT_CONFIG_PATH` if it exists, else defaults.
        broker_uid: the broker's effective UID (default: ours).
        env: environment for ``PARROT_MAX_INPUT_SIZE`` (default: ``os.environ``).
        explicit: False when ``path`` is only the default location (a missing file is fine).

    Raises:
        ConfigError: unreadable, unsafe, invalid TOML, unknown key, wrong type, unknown user
            or group, or an unusable shared-secret file.
    """
    broker_uid = users.effective_uid() if broker_uid is None else broker_uid
    env = os.environ if env is None else env
    if path is None:
        path, explicit = DEFAULT_CONFIG_PATH, False
    doc = _read_doc(path, broker_uid, explicit)
    used = None if doc is None else path
    origin = str(used) if used else "(defaults)"
    try:
        # Strict: a string where the schema wants a number (uids = ["0"]) is a wrong type, not a
        # value to coerce.
        cfg = msgspec.convert(_apply_env(doc or {}, env), ConfigFile)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config {origin}: {exc}") from None
    server = cfg.server
    rules = None if cfg.peers is None else tuple(resolve_rule(r, i, origin) for i, r in enumerate(cfg.peers))
    remote = RemoteRules(tuple(RemoteRule(r.name or f"remote[{i}]", tuple(r.nodes), tuple(r.names))
                               for i, r in enumerate(cfg.remote)))
    policy: Policy = (DefaultPolicy(broker_uid, remote) if rules is None
                      else RulePolicy(rules, users.user_name, remote=remote))
    socket_gid = None if server.socket_group is None else _gid_of(server.socket_group, f"{origin}: server.socket_group")
    secret = _read_secret(server.shared_secret_file, broker_uid)
    return LoadedConfig(used, server, rules, policy, socket_gid, secret, cfg.relay)


#: The user the shipped system unit runs the broker as.
SERVICE_USER: Final = "parrot-mcp"


def unmatchable_rules(cfg: LoadedConfig, broker_user: str | None = None) -> list[str]:
    """Why each ``[[peers]]`` rule of ``cfg`` that can never match cannot (empty if none can't).

    Judged for a broker process running as ``broker_user`` (a name or a UID; default: the
    service user ``parrot-mcp`` if we are root and it exists, else us), with no capability but
    root's: :func:`parrot_ipc.app.attestation.never_matches`.

    Raises:
        ConfigError: ``broker_user`` names no user.
    """
    euid = users.effective_uid()
    if broker_user is None:
        service = users.uid_of(SERVICE_USER) if euid == 0 else None
        uid = euid if service is None else service
    else:
        uid = int(broker_user) if broker_user.isdigit() else _uid_of(broker_user, "--broker-user")
    facts = BrokerFacts.of_process(uid, f"running as UID {uid}")
    return [r for r in (never_matches(rule, facts) for rule in cfg.rules or ()) if r]


def describe(cfg: LoadedConfig, broker_uid: int | None = None) -> dict[str, Any]:
    """The effective policy as plain data (for ``parrot-ipc check-config``); no secrets.

    Returns ``{"config": path or None, "server": {...}, "policy": str, "peers": [{...}],
    "shared_secret": bool, "remote": [{rule, nodes, names}]}``; ``broker_uid`` defaults to our effective UID.
    """
    broker_uid = users.effective_uid() if broker_uid is None else broker_uid
    server = msgspec.to_builtins(cfg.server)
    if cfg.rules is None:
        rules: list[dict[str, Any]] = [
            {"rule": "default:root", "uids": [0], "scopes": "the defaults, plus admin and remote_send"},
            {"rule": "default:broker_uid", "uids": [broker_uid],
             "scopes": "the defaults, plus remote_send and relay"},
        ]
    else:
        rules = [
            {"rule": r.label, "uids": sorted(r.uids), "gids": sorted(r.gids),
             "executables": list(r.executables), "scopes": sorted(r.scopes),
             "may_send_to": list(r.may_send_to), "bind": r.bind, "names": list(r.names)}
            for r in cfg.rules
        ]
    remote = [{"rule": r.label, "nodes": list(r.nodes), "names": list(r.names)}
              for r in remote_rules_of(cfg.policy).rules]
    return {"config": str(cfg.path) if cfg.path else None, "server": server, "remote": remote,
            "policy": "default" if cfg.rules is None else "rules (first match wins; no match is refused)",
            "peers": rules, "shared_secret": cfg.shared_secret is not None}
