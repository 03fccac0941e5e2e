"""Process limits (getrlimit(2)/setrlimit(2))."""

from __future__ import annotations


def raise_nofile_limit(wanted: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit toward ``wanted`` file descriptors (getrlimit(2)).

    Returns ``(soft, hard)`` after the change; the soft limit never exceeds the hard one, so
    a caller compares ``soft`` with ``wanted`` to know whether it got what it asked for.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard

