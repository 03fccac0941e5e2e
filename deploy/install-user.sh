#!/bin/sh
# Install parrot-ipc as a user service: docs/operations.md, "Install as a user service".
# Run as the user (pipx installed by root first), from a checkout:  sh deploy/install-user.sh
set -eu
pipx install --force .      # ~/.local/bin/parrot-ipc
install -D -m 0644 -t ~/.config/systemd/user systemd/user/parrot-ipc.socket systemd/user/parrot-ipc.service
systemctl --user daemon-reload
systemctl --user enable --now parrot-ipc.socket
