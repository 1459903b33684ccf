#!/usr/bin/env bash
# `make lint`: systemd-analyze verify on the shipped units, any warning fails.
# Works without a running systemd (containers, CI): verify only loads the unit files. It also
# checks that ExecStart's /usr/sbin/mount.fuse.missionfs exists: setup.sh links it there
# (`missionfs install-mount-helper`, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
for unit in systemd/*.service; do
    out=$(systemd-analyze verify --man=no "$unit" 2>&1) || status=1
    if [ -n "$out" ]; then
        printf '%s\n' "$out" >&2
        status=1
    fi
done
exit "$status"
