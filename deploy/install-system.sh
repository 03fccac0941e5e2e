#!/bin/sh
# Install parrot-ipc as a system service: docs/operations.md, "Install as a system service".
# Run as root from a checkout of this repository:  sh deploy/install-system.sh
set -eu

# 1. Tools and the interpreter (apparmor gives apparmor_parser; python3-venv gives venv).
need=""
for pkg in python3 python3-venv apparmor; do
  dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || need="$need $pkg"
done
if [ -n "$need" ]; then apt-get update && apt-get install -y $need; fi

# 2. The code, in the venv the unit and the AppArmor profile expect.
install -d -m 0755 /opt/parrot-ipc
/usr/bin/python3 -m venv /opt/parrot-ipc/venv   # Debian's python3: what the profile allows
/opt/parrot-ipc/venv/bin/pip install .          # from the checkout; compiles the .pyc files now

# 3. The service user and group parrot-mcp (sysusers.d(5)).
install -D -m 0644 systemd/parrot-ipc.sysusers.conf /usr/lib/sysusers.d/parrot-ipc.conf
systemd-sysusers parrot-ipc.conf

# 4. The config the unit reads (empty = defaults; see the [server] table in docs/protocol.md).
install -d -m 0755 /etc/parrot-ipc
[ -e /etc/parrot-ipc/config.toml ] || install -m 0644 /dev/null /etc/parrot-ipc/config.toml

# 5. The AppArmor profile. Load it before the first start: the unit says
#    AppArmorProfile=parrot-ipc, and systemd refuses to start it if AppArmor is enabled but the
#    profile is not loaded. (On a kernel without AppArmor the setting does nothing.)
install -m 0644 apparmor/parrot-ipc /etc/apparmor.d/parrot-ipc
if aa-enabled -q 2>/dev/null; then apparmor_parser -r -W /etc/apparmor.d/parrot-ipc; fi

# 6. The units, then the socket (the service starts on the first connection).
install -m 0644 systemd/parrot-ipc.socket systemd/parrot-ipc.service /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now parrot-ipc.socket
