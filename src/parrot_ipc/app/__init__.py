"""The application: the daemon's wiring (:mod:`.daemon`), the ``parrot-ipc`` CLI (:mod:`.cli`,
:mod:`.cli_admin`, :mod:`.cli_output`), the config file, the session file and ``doctor``."""
