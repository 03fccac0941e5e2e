"""Users and groups: name <-> UID/GID lookups in the system databases, and our effective UID.

The only place outside the standard library's own callers that reads passwd(5) and group(5)
(through getpwnam(3), getpwuid(3), getgrnam(3), which also consult NSS, nsswitch.conf(5)).
"""

from __future__ import annotations

import grp
import os
import pwd


def effective_uid() -> int:
    """Our effective UID (geteuid(2)): the UID the broker's files must belong to."""
    return os.geteuid()


def uid_of(name: str) -> int | None:
    """The UID of user ``name`` (getpwnam(3)), or None if there is no such user."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def gid_of(name: str) -> int | None:
    """The GID of group ``name`` (getgrnam(3)), or None if there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def user_name(uid: int) -> str | None:
    """The login name of ``uid`` (getpwuid(3)), or None if no user has it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
