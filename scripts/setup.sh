#!/usr/bin/env bash
# One-time setup on a fresh Debian 12 machine (run as root, or with sudo available):
# system packages for FUSE and building pyfuse3, then a venv at .venv with missionfs installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# nodejs: the Node.js example worker (scraper/examples/worker.mjs), which the tests run.
# rsync: tests/mount/test_truth.py copies done/ with it (rsync -a, rsync --inplace).
# chromium: tests/mount/test_map.py looks at the HTML map in headless Chromium.
# git: tests/mount/test_fsck.py keeps a git repository in scraped-tiles/ (the README recipe).
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3 python3-venv python3-dev nodejs rsync chromium git)
# For `make lint`: shellcheck on the shell scripts, `vagrant validate` on vagrant/Vagrantfile,
# `systemd-analyze verify` on systemd/missionfs@.service (systemd need not be running).
# Without recommends: vagrant's recommended libvirt/QEMU stack is not needed to validate.
LINT_PACKAGES=(shellcheck vagrant systemd)

is_missing() { ! dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for pkg in "${APT_PACKAGES[@]}"; do if is_missing "$pkg"; then missing+=("$pkg"); fi; done
missing_lint=()
for pkg in "${LINT_PACKAGES[@]}"; do if is_missing "$pkg"; then missing_lint+=("$pkg"); fi; done
if [ "${#missing[@]}" -gt 0 ] || [ "${#missing_lint[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${missing[*]} ${missing_lint[*]}"
    $SUDO apt-get update -qq
    if [ "${#missing[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if [ "${#missing_lint[@]}" -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            "${missing_lint[@]}" >/dev/null
    fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# The mount(8) helper (`mount -t fuse.missionfs`, /etc/fstab, the systemd unit's ExecStart):
# /usr/sbin/mount.fuse.missionfs -> this checkout's .venv/bin/mount.fuse.missionfs.
if [ "$(id -u)" -eq 0 ]; then
    .venv/bin/missionfs install-mount-helper || echo "setup: warning: mount helper not linked"
else
    echo "setup: not root: run 'sudo .venv/bin/missionfs install-mount-helper' for fstab mounts"
fi
touch .venv/.installed
echo "setup: ready (.venv/bin/missionfs)"
