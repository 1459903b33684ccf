#!/usr/bin/env bash
# One-time setup on a fresh Debian 12 machine (run as root, or with sudo available):
# system packages for FUSE and building pyfuse3, then a venv at .venv with missionfs installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# nodejs: the Node.js example worker (scraper/examples/worker.mjs), which the tests run.
# rsync: tests/test_truth.py copies done/ with it (rsync -a, rsync --inplace).
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3 python3-venv python3-dev nodejs rsync)
# For `make lint`: shellcheck on the shell scripts, `vagrant validate` on vagrant/Vagrantfile.
# Without recommends: vagrant's recommended libvirt/QEMU stack is not needed to validate.
LINT_PACKAGES=(shellcheck vagrant)

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
touch .venv/.installed
echo "setup: ready (.venv/bin/missionfs)"
