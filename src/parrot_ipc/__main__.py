"""``python -m parrot_ipc``: the same as the ``parrot-ipc`` command."""

from .app.cli import main

main()
