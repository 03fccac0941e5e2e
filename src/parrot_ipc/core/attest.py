"""Attestation that holds after exec(2): the executable is checked again before each request.

The policy reads a peer's executable (``/proc/<pid>/exe``) once, at accept. A process keeps its
pid, start time, credentials and open sockets across execve(2), so a program the policy admits
could hand its connection to one it refuses (issue 13, finding 3: python3 moves the socket to
fd 3 and execs socat). For a connection whose admission rested on the executable or binds to
the process (:attr:`parrot_ipc.core.policy.Admission.pins_exe`), the core asks the pinned
process (:class:`parrot_ipc.core.policy.ProcessProbe`, made by the OS layer) before every
request, ``get_token`` and ``authenticate`` included. Sans-I/O: the probe is injected with the
peer's credentials, as the shell injects ``identify``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ErrorCode, RpcError
from .connection import Connection
from .effects import AuditSink
from .sessions import Sessions


def recheck_exe(conn: Connection, sessions: Sessions, audit: AuditSink) -> None:
    """Refuse the request on ``conn`` unless its process still runs the executable it was
    admitted with.

    The probe's answer must equal ``conn.peer.exe`` (the path read at accept). Otherwise the
    connection's session ends (``session_ended``, why ``peer_exe_changed``; every connection
    bound to it loses it) and the event ``peer_exe_changed`` is audited with ``exe_was`` and
    ``exe_now`` (None when it could not be read). Fails closed: no probe, or a probe that
    cannot read the executable, is a refusal too.

    Raises:
        RpcError: -32001 ``peer_exe_changed`` (the process exec'd another program) or -32001
            ``peer_attestation_failed`` (its executable can no longer be read).
    """
    peer = conn.peer
    exe_now = None if peer.process is None else peer.process.exe()
    if exe_now is not None and exe_now == peer.exe:
        return
    s = conn.session
    fields: dict[str, Any] = {"conn": conn.conn_id, "uid": peer.uid, "pid": peer.pid, "exe_was": peer.exe,
                              "exe_now": exe_now, "instance": None if s is None else s.instance_id}
    if s is not None and not s.revoked:
        sessions.kill(s, "peer_exe_changed")
    audit("peer_exe_changed", fields)
    if exe_now is None:
        raise RpcError(ErrorCode.UNAUTHENTICATED, "peer_attestation_failed",
                       "The broker can no longer read which program this process runs; reconnect.")
    raise RpcError(ErrorCode.UNAUTHENTICATED, "peer_exe_changed",
                   f"This process now runs {exe_now}, not the program it connected as; its session ended.")
