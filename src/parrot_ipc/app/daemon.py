"""The broker daemon's wiring: config, store, listener, limits, audit; then the trio shell.

:func:`run_broker` builds everything (it never awaits and imports no trio) and hands over to
the shell's :func:`parrot_ipc.shell.supervisor.run_until_signal`, which runs ``trio.run``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ..core import Broker, BrokerConfig
from ..core.timefmt import rfc3339
from ..errors import ConfigError, StartupError, UnsafeFile
from ..os import limits as os_limits
from ..os import paths as os_paths
from ..os import systemd
from ..os.files import FileRule, open_checked
from ..os.resources import ResourceDir
from ..shell.clock import trio_wall_clock
from ..shell.server import BrokerServer, identify_socket_stream, socket_listener
from ..shell.supervisor import Supervisor, run_until_signal
from ..store import MemoryStore, Store
from .config_file import LoadedConfig, load_config

if TYPE_CHECKING:  # types only: the socket calls are the OS layer's and trio's
    import socket as stdsocket

log = logging.getLogger("parrot_ipc.server")
_audit_log = logging.getLogger("parrot_ipc.audit")
_AUDIT_ENCODER = msgspec.json.Encoder()
_FD_HEADROOM = 64  # descriptors beyond the connections: listener, store, logs, pidfds


def audit_sink(event: str, fields: dict[str, Any]) -> None:
    """Write one audit event as a JSON line (with ``ts``, RFC 3339) to the ``parrot_ipc.audit``
    logger: stderr, and the ``--audit-log`` file when one is open. Fields never hold tokens,
    secrets or message content (the core never puts them there)."""
    if _audit_log.isEnabledFor(logging.INFO):
        line = _AUDIT_ENCODER.encode({"ts": rfc3339(time.time()), "event": event, **fields})
        _audit_log.info("%s", line.decode())


def open_audit_file(path: str) -> None:
    """Also send audit lines to ``path``: appended, created 0600, never through a symlink.

    Opened with :func:`parrot_ipc.os.files.open_checked`: a regular file owned by our euid,
    private (no group or other bits), one hard link.

    Raises:
        StartupError: the file cannot be opened, or is not ours with mode 0600 (one line).
    """
    rule = FileRule("file", frozenset({os.geteuid()}), 0o077, what="audit log")
    try:
        fd = open_checked(path, rule, flags=os.O_WRONLY | os.O_APPEND, create_mode=0o600)
    except OSError as exc:
        raise StartupError(f"refusing to start: cannot open audit log {path}: {exc.strerror}") from None
    except UnsafeFile as exc:
        raise StartupError(f"refusing to start: {exc}") from None
    handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    handler.setFormatter(logging.Formatter("%(message)s"))
    _audit_log.addHandler(handler)


def _fit_nofile_limit(max_connections: int) -> None:
    """Raise RLIMIT_NOFILE to fit ``max_connections``; say so in the log if the hard limit is lower.

    Each connection may hold two descriptors (its socket, and the pidfd kept while its rule pins
    the peer's executable: issue 13), plus :data:`_FD_HEADROOM` for the listener, store and logs.
    """
    wanted = 2 * max_connections + _FD_HEADROOM
    soft, hard = os_limits.raise_nofile_limit(wanted)
    if soft < wanted:
        log.warning("RLIMIT_NOFILE hard limit is %d, lower than max_connections x 2 + %d = %d (a socket and "
                    "a pidfd each): about %d connections fit (raise LimitNOFILE= or ulimit -Hn)", hard,
                    _FD_HEADROOM, wanted, max(0, (soft - _FD_HEADROOM) // 2))
    else:
        log.debug("RLIMIT_NOFILE soft limit %d (max_connections %d)", soft, max_connections)


def open_store(kind: Literal["sqlite", "memory"], state_dir: str | None, config: BrokerConfig) -> Store:
    """The broker's store: a :class:`~parrot_ipc.store.sqlite.SqliteStore` in ``state_dir``
    (default :func:`parrot_ipc.store.sqlite.default_state_dir`), or a throwaway
    :class:`~parrot_ipc.store.MemoryStore`. Each message the SQLite store quarantines when it
    reads it (a row that failed its checksum) is audited as ``message_quarantined`` (id,
    mailbox). ``config.store_cache_bytes`` bounds its message body cache.

    Raises:
        StartupError: the state directory or database cannot be used (one line).
    """
    if kind == "memory":
        return MemoryStore()
    from ..store.sqlite import SqliteStore, default_state_dir

    path = state_dir or default_state_dir()
    store = SqliteStore.open(path, durability=config.durability, cache_bytes=config.store_cache_bytes,
                             defer_mail=True)  # quick_check and mailboxes: _serve's opening
    log.info("state: %s (durability %s, body cache %d bytes)", store.path, config.durability,
             config.store_cache_bytes)

    def quarantined(mid: str, mailbox: str) -> None:  # never the content (issue 14)
        log.warning("message %s of mailbox %s failed its checksum: quarantined, not delivered", mid, mailbox)
        audit_sink("message_quarantined", {"id": mid, "mailbox": mailbox})

    store.on_quarantine = quarantined
    return store


def _acquire_listener(socket_path: str, group_gid: int | None = None) -> tuple[stdsocket.socket, str, Callable[[], None]]:
    """The listening socket, where it is (for the log), and how to remove it (idempotent).

    Socket activation wins: the passed socket is served as is and never unlinked.
    """
    activated = systemd.activated_listener()
    if activated is not None:
        name = activated.getsockname()
        where = f"{name or '(unnamed)'} (fd {systemd.SD_LISTEN_FDS_START}, socket-activated)"
        return activated, where, lambda: None
    if os_paths.is_fallback_path(socket_path):
        log.info("XDG_RUNTIME_DIR is unset: using the per-user directory %s (mode 0700, owner and mode "
                 "checked as tmux checks /tmp/tmux-UID); this user's clients find it by the same rule",
                 os.path.dirname(os.path.abspath(socket_path)))
    os_paths.ensure_runtime_dir(os.path.dirname(os.path.abspath(socket_path)), group_gid=group_gid)
    listener, inode = os_paths.bind_listener(socket_path, group_gid=group_gid)
    return listener, socket_path, lambda: os_paths.remove_socket(socket_path, inode)


def _load(config: BrokerConfig | LoadedConfig | None) -> LoadedConfig:
    if isinstance(config, LoadedConfig):
        return config
    loaded = load_config(None, explicit=False)
    return LoadedConfig(loaded.path, config or loaded.server, loaded.rules, loaded.policy,
                        loaded.socket_gid, loaded.shared_secret)


def open_resources(resources: ResourceDir) -> None:
    """Open (or reopen, on SIGHUP) and pin the resources directory; log why it is refused."""
    why = resources.reopen()
    if why is not None:
        log.warning("get_resource will refuse every name until this is fixed and SIGHUP sent: %s", why)


def config_reloader(server: BrokerServer, config_path: str | None,
                    resources: ResourceDir | None = None) -> Callable[[], None]:
    """The SIGHUP callback: reopen and check ``resources`` (see :func:`open_resources`), re-read
    the config (``config_path``, or the default location) and apply its policy; a bad file is
    logged and audited (``config_reload_failed``) and the current policy kept."""
    def reload() -> None:
        if resources is not None:
            open_resources(resources)
        path = None if config_path is None else Path(config_path)
        try:
            fresh = load_config(path, explicit=config_path is not None)
        except ConfigError as exc:
            log.error("config reload failed, keeping the current policy: %s", exc)
            audit_sink("config_reload_failed", {"error": str(exc)})
            return
        server.reload_policy(fresh.policy, str(fresh.path or "(defaults)"))
        log.info("config reloaded from %s", fresh.path or "(defaults)")

    return reload


def run_broker(socket_path: str, config: BrokerConfig | LoadedConfig | None = None, *,
               config_path: str | None = None, store: Literal["sqlite", "memory"] = "sqlite",
               state_dir: str | None = None) -> None:
    """Run a broker on ``socket_path`` until SIGTERM or SIGINT; SIGHUP reloads the policy. Blocks.

    Opens the store (``"sqlite"``: durable, in ``state_dir``; ``"memory"``: throwaway), creates
    or checks the runtime directory (0700, or 0750 with a socket group), binds the socket
    (0600/0660, under umask 0o077), admits peers by the config's policy (by default our UID and
    root), and unlinks the socket on the way out. On a clean stop the store writes what is
    still pending and closes. Under socket activation (``$LISTEN_PID``/``$LISTEN_FDS``,
    sd_listen_fds(3)) it serves the passed fd 3 instead, and neither creates, binds nor unlinks
    anything (systemd owns the socket file). With ``$NOTIFY_SOCKET`` set it reports to the
    service manager (sd_notify(3)): ``READY=1``, ``STATUS=`` counts, ``WATCHDOG=1``,
    ``STOPPING=1``.

    Args:
        socket_path: where to listen.
        config: a loaded config (:func:`parrot_ipc.app.config_file.load_config`) or bare settings.
        config_path: the file SIGHUP re-reads (None: the default location).
        store: which store: ``"sqlite"`` or ``"memory"``.
        state_dir: where the SQLite store lives (None: the default state directory).

    Raises:
        StartupError: the directory or socket path is unsafe, a broker already answers
            there, or the state database is locked, corrupt or not writable. A row that only
            the mailboxes' read finds (it runs after the broker answers ``ping`` and
            ``get_token``: :meth:`parrot_ipc.store.sqlite.SqliteStore.open_mail`) stops the
            broker and raises it then.
    """
    loaded = _load(config)
    st = open_store(store, state_dir, loaded.server)
    try:
        _serve(socket_path, loaded, st, config_path)
    finally:
        close_store = getattr(st, "close", None)
        if close_store is not None:
            try:
                close_store()
            except Exception as exc:  # the last writes failed: say so, in one line
                log.error("closing the store failed: %s", exc)
    log.info("broker stopped")


def _serve(socket_path: str, loaded: LoadedConfig, st: Store, config_path: str | None) -> None:
    listener, where, release = _acquire_listener(socket_path, loaded.socket_gid)
    _fit_nofile_limit(loaded.server.max_connections)
    clock = trio_wall_clock()
    resources = ResourceDir(loaded.server.resources_dir)
    open_resources(resources)
    broker = Broker(config=loaded.server, policy=loaded.policy, clock=clock, audit=audit_sink,
                    shared_secret=loaded.shared_secret, store=st, id_floor=getattr(st, "max_id", None),
                    resources=resources)
    supervisor = Supervisor.from_env()

    def on_listener_closed() -> None:
        release()
        supervisor.stopping()

    open_mail = getattr(st, "open_mail", None)  # the SQLite store's deferred half (issue 14)
    server = BrokerServer(broker, socket_listener(listener), identify=identify_socket_stream, clock=clock,
                          on_listener_closed=on_listener_closed,
                          opening=None if open_mail is None else lambda: open_mail(time.time()))
    log.info("parrot-ipc broker listening on %s (uid %d, pid %d, policy %s)", where, os.geteuid(),
             os.getpid(),
             "default" if loaded.rules is None else f"{len(loaded.rules)} rule(s) from {loaded.path}")
    try:
        run_until_signal(server, supervisor, config_reloader(server, config_path, resources), clock)
    finally:
        release()
        listener.close()
        supervisor.notifier.close()
    if server.open_error is not None:  # the store failed its quick_check or its mailboxes' read
        raise server.open_error
