"""The settings of a loaded systemd unit, read with ``systemctl show`` (systemctl(1)), for
``parrot-ipc doctor``: what the running unit makes possible (its user, ``PrivateUsers=``,
``ProtectProc=``, capability bounding set; systemd.exec(5)).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import Final

#: How long ``systemctl show`` may take, in seconds.
SHOW_TIMEOUT_S: Final = 5.0


def unit_properties(unit: str, names: Sequence[str], *, user: bool = False,
                    timeout_s: float = SHOW_TIMEOUT_S) -> dict[str, str] | None:
    """``{name: value}`` of ``systemctl [--user] show UNIT -p NAME...`` for a loaded unit.

    Returns None when there is no systemctl, no service manager to ask (PID 1 is not systemd,
    no user manager), the call fails or times out, or the unit is not loaded (``LoadState``).
    Never raises.
    """
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    cmd = [systemctl, *(["--user"] if user else []), "show", unit,
           *(f"--property={n}" for n in ("LoadState", *names))]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    props = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    return props if props.get("LoadState") == "loaded" else None
