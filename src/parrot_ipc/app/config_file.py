"""Loading the config file: TOML, decoded by msgspec into typed Structs, names resolved.

Default path ``/etc/parrot-ipc/config.toml`` (read only if it exists); ``--config`` sets another.
The file must be owned by root or the broker's user and not writable by group or others (it
decides who may talk to the broker). An unknown key or a wrong type is an error naming the key
(msgspec's ``$.peers[0].scopes[1]`` paths). ``PARROT_MAX_INPUT_SIZE`` overrides
``max_frame_bytes`` (the Parrot IPC security guide's variable).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from ..core.config import BrokerConfig, ConfigFile, PeerRuleConfig
from ..core.policy import DefaultPolicy, PeerRule, Policy, RulePolicy
from ..errors import ConfigError, StartupError
from ..os.files import owner_mode_problem, read_private_file

DEFAULT_CONFIG_PATH: Final = Path("/etc/parrot-ipc/config.toml")


@dataclass(frozen=True)
class LoadedConfig:
    """A config ready to use. ``path`` is None when no file was read (the defaults)."""

    path: Path | None
    server: BrokerConfig
    rules: tuple[PeerRule, ...] | None
    policy: Policy
    socket_gid: int | None
    shared_secret: bytes | None


def _uid_of(name: str, where: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ConfigError(f"{where}: no such user {name!r}") from None


def _gid_of(name: str, where: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"{where}: no such group {name!r}") from None


def resolve_rule(rule: PeerRuleConfig, index: int, origin: str) -> PeerRule:
    """Turn one ``[[peers]]`` table into a :class:`PeerRule` with numeric UIDs and GIDs."""
    where = f"{origin}: peers[{index}]"
    if not (rule.users or rule.uids or rule.groups or rule.gids):
        raise ConfigError(f"{where}: give at least one of users, uids, groups, gids")
    uids = frozenset(rule.uids) | {_uid_of(u, where) for u in rule.users}
    gids = frozenset(rule.gids) | {_gid_of(g, where) for g in rule.groups}
    return PeerRule(
        label=rule.name or f"peers[{index}]",
        uids=frozenset(uids), gids=frozenset(gids),
        executables=tuple(rule.executables), scopes=frozenset(rule.scopes),
        may_send_to=tuple(rule.may_send_to), bind=rule.bind,
    )


def _check_file(path: Path, broker_uid: int) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config {path} is not a regular file")
    problem = owner_mode_problem(st, broker_uid)
    if problem:
        raise ConfigError(f"config {path} {problem}")


def load_config(path: Path | None = None, *, broker_uid: int | None = None,
                env: Mapping[str, str] | None = None, explicit: bool = True) -> LoadedConfig:
    """Read, check and resolve the config.

    Args:
        path: the file; None means :data:`DEFAULT_CONFIG_PATH` if it exists, else defaults.
        broker_uid: the broker's effective UID (default: ours).
        env: environment for ``PARROT_MAX_INPUT_SIZE`` (default: ``os.environ``).
        explicit: False when ``path`` is only the default location (a missing file is fine).

    Raises:
        ConfigError: unreadable, unsafe, invalid TOML, unknown key, wrong type, unknown user
            or group, or an unusable shared-secret file.
    """
    broker_uid = os.geteuid() if broker_uid is None else broker_uid
    env = os.environ if env is None else env
    if path is None:
        path, explicit = DEFAULT_CONFIG_PATH, False
    doc: dict[str, Any] = {}
    used: Path | None = None
    if explicit or path.exists():
        _check_file(path, broker_uid)
        try:
            with path.open("rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
        used = path
    origin = str(used) if used else "(defaults)"
    max_input = env.get("PARROT_MAX_INPUT_SIZE")
    if max_input:
        try:
            size = int(max_input)
        except ValueError:
            raise ConfigError(f"PARROT_MAX_INPUT_SIZE={max_input!r} is not an integer "
                              f"(it overrides server.max_frame_bytes)") from None
        server_doc = doc.get("server", {})
        if isinstance(server_doc, dict):  # else let msgspec name the wrong type of [server]
            doc = {**doc, "server": {**server_doc, "max_frame_bytes": size}}
    try:
        # Strict: a string where the schema wants a number (uids = ["0"]) is a wrong type, not a
        # value to coerce.
        cfg = msgspec.convert(doc, ConfigFile)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config {origin}: {exc}") from None
    server = cfg.server
    rules = None if cfg.peers is None else tuple(resolve_rule(r, i, origin) for i, r in enumerate(cfg.peers))
    policy: Policy = DefaultPolicy(broker_uid) if rules is None else RulePolicy(rules)
    socket_gid = None if server.socket_group is None else _gid_of(server.socket_group, f"{origin}: server.socket_group")
    secret = None
    if server.shared_secret_file is not None:
        try:
            secret = read_private_file(server.shared_secret_file, broker_uid).strip()
        except StartupError as exc:
            raise ConfigError(str(exc)) from None
        if not secret:
            raise ConfigError(f"secret file {server.shared_secret_file} is empty")
    return LoadedConfig(used, server, rules, policy, socket_gid, secret)


def describe(cfg: LoadedConfig, broker_uid: int | None = None) -> dict[str, Any]:
    """The effective policy as plain data (for ``parrot-ipc check-config``); no secrets."""
    broker_uid = os.geteuid() if broker_uid is None else broker_uid
    server = msgspec.to_builtins(cfg.server)
    if cfg.rules is None:
        rules: list[dict[str, Any]] = [
            {"rule": "default:root", "uids": [0], "scopes": "all but admin, plus admin"},
            {"rule": "default:broker_uid", "uids": [broker_uid], "scopes": "all but admin"},
        ]
    else:
        rules = [
            {"rule": r.label, "uids": sorted(r.uids), "gids": sorted(r.gids),
             "executables": list(r.executables), "scopes": sorted(r.scopes),
             "may_send_to": list(r.may_send_to), "bind": r.bind}
            for r in cfg.rules
        ]
    return {"config": str(cfg.path) if cfg.path else None, "server": server,
            "policy": "default" if cfg.rules is None else "rules (first match wins; no match is refused)",
            "peers": rules, "shared_secret": cfg.shared_secret is not None}
