"""The OS layer: the only package that makes Linux calls.

- :mod:`.files`: the one safe-open helper (``open_checked``: ``O_NOFOLLOW``, fstat(2) type,
  owner, mode, group, link count) and the rules every caller checks with it;
- :mod:`.paths`: the default socket path, the runtime directory, binding the listening socket;
- :mod:`.peer`: who is on the other end of a connection (SO_PEERCRED, pidfd, /proc);
- :mod:`.users`: user and group names to IDs and back;
- :mod:`.resources`: the ``get_resource`` reader;
- :mod:`.limits`, :mod:`.systemd`, :mod:`.host`: RLIMIT_NOFILE, socket activation and
  sd_notify(3), read-only probes for ``doctor``.
"""
