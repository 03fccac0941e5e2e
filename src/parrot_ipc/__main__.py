"""``python -m parrot_ipc``: the same as the ``parrot-ipc`` command."""

from .cli import main

main()
