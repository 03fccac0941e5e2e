"""Clients authenticate the broker: who is listening is checked before a byte is sent.

A client that connects to a path someone else controls would hand that listener its token
and its messages. So every client (the blocking :class:`~parrot_ipc.client.blocking.Client`,
the trio :class:`~parrot_ipc.client.trio_client.AsyncClient`, and through them the CLI and
the MCP bridge) reads SO_PEERCRED on its own connection first (unix(7): the listener's
credentials, recorded by the kernel at listen(2)/connect(2) time) and refuses a listener that
is not root, the client's own UID, or the expected broker user. The same check that D-Bus
clients and ssh-agent users make in the other direction (issue 13, finding 5).

The expected broker user, first found of: the ``broker_user`` argument,
``$PARROT_IPC_BROKER_USER``, ``[server] broker_user`` of the default config file
(``/etc/parrot-ipc/config.toml``, read only if it is root's or ours and not writable by others), then
``parrot-mcp`` (the system unit's user). A name that no user has adds nothing.
"""

from __future__ import annotations

import functools
import os
import tomllib
from typing import TYPE_CHECKING, Final

from ..errors import UnsafeFile, UntrustedBroker
from ..os import peer as os_peer
from ..os import users
from ..os.files import policy_file_rule, read_checked

if TYPE_CHECKING:
    import socket

#: The system unit's user (systemd/parrot-ipc.service, ``User=parrot-mcp``).
DEFAULT_BROKER_USER: Final = "parrot-mcp"
#: The variable that names the broker's user for one client.
BROKER_USER_ENV: Final = "PARROT_IPC_BROKER_USER"
#: The config file clients read ``[server] broker_user`` from (the broker's default config,
#: :data:`parrot_ipc.app.config_file.DEFAULT_CONFIG_PATH`).
CONFIG_PATH: Final = "/etc/parrot-ipc/config.toml"


@functools.cache
def configured_broker_user(path: str = CONFIG_PATH) -> str | None:
    """``[server] broker_user`` of the config file at ``path``, or None (no file, unreadable,
    not root's or ours, or writable by others, not TOML, no such key). Read once per process."""
    try:
        raw = read_checked(path, policy_file_rule(users.effective_uid(), "config file"), max_bytes=1 << 20)
        server = tomllib.loads(raw.decode()).get("server", {})
    except (OSError, UnsafeFile, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    name = server.get("broker_user") if isinstance(server, dict) else None
    return name if isinstance(name, str) else None


def broker_user_name(broker_user: str | None = None) -> str:
    """The expected broker user's name (see the module docstring for the order)."""
    return broker_user or os.environ.get(BROKER_USER_ENV) or configured_broker_user() or DEFAULT_BROKER_USER


def trusted_uids(broker_user: str | None = None) -> dict[int, str]:
    """The UIDs a client accepts as its broker, each with the words that explain it:
    root, our effective UID, and the expected broker user's (if that user exists)."""
    name = broker_user_name(broker_user)
    out = {0: "root"}
    out.setdefault(users.effective_uid(), "your own uid")
    uid = users.uid_of(name)
    if uid is not None:
        out.setdefault(uid, f"the broker user {name}")
    return out


def verify_broker(sock: socket.socket, socket_path: str, broker_user: str | None = None) -> None:
    """Check the listener on the connected ``sock`` before anything is sent on it.

    Raises:
        UntrustedBroker: its UID (SO_PEERCRED) is not in :func:`trusted_uids`; the message
            says who was listening and whom the client expected.
        OSError: SO_PEERCRED cannot be read.
    """
    cred = os_peer.peer_credentials(sock)
    if cred.uid == 0 or cred.uid == users.effective_uid():  # the common case: no lookups
        return
    trusted = trusted_uids(broker_user)
    if cred.uid in trusted:
        return
    who = users.user_name(cred.uid)
    listener = f"uid {cred.uid}" + (f" ({who})" if who else "") + f", pid {cred.pid}"
    expected = " or ".join(f"{why} (uid {uid})" if uid else why for uid, why in trusted.items())
    raise UntrustedBroker(socket_path, cred.uid, cred.pid,
                          f"the listener is {listener}, not {expected}; nothing was sent")
