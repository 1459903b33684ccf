#!/usr/bin/env bash
# Provisions a Debian 12 machine for missionfs and proves it: the project's own setup, then the
# README's `make test`. Used by the Vagrant VM (vagrant/Vagrantfile). Idempotent: a second run
# installs nothing new and runs the tests again. (`make fresh-test` does not use it: it runs the
# README's own commands.)
#
#   provision.sh [CHECKOUT]   # CHECKOUT: the repository; default: the folder above this script's
#
# Runs as root. The package list lives in scripts/setup.sh only (called by make); this script adds
# nothing but `make` itself, the one tool the README's commands take for granted.
set -euo pipefail

repo="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
if [ ! -f "$repo/Makefile" ] || [ ! -f "$repo/scripts/setup.sh" ]; then
    echo "provision: $repo is not a missionfs checkout (no Makefile or scripts/setup.sh)" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "provision: run as root (it installs Debian packages and mounts FUSE filesystems)" >&2
    exit 2
fi
cd "$repo"
export DEBIAN_FRONTEND=noninteractive

if ! command -v make >/dev/null 2>&1; then
    echo "provision: installing make"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends make >/dev/null
fi

# /dev/fuse: Debian's kernel builds FUSE as a module, normally loaded on first use; a chroot has
# the host's /dev bound instead.
if [ ! -e /dev/fuse ] && command -v modprobe >/dev/null 2>&1; then
    modprobe fuse || true
fi
if [ ! -e /dev/fuse ]; then
    echo "provision: /dev/fuse is missing: this kernel has no FUSE" >&2
    exit 1
fi

make test
echo "provision: $repo is set up and its tests pass"
