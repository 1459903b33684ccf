#!/usr/bin/env bash
# `make fresh-test`: the README's two commands on a Debian 12 machine that has nothing installed.
#
#   1. debootstrap a minimal Debian 12 root filesystem (variant minbase: no make, no git, no Python);
#   2. bind /proc, /sys and /dev (for /dev/fuse) into it;
#   3. copy a clean checkout in: the tracked and untracked-but-not-ignored files of this work tree
#      (no .venv, no caches), or the commit MISSIONFS_FRESH_REF names;
#   4. inside it, as root, run exactly what the README tells a user to type: its prerequisite
#      block (installing make), then its two-commands block (`make demo`, `make test`) in the
#      checkout. Both blocks are read from README.md (the code blocks after the
#      `<!-- fresh-test:prerequisite` and `<!-- fresh-test:commands` markers), so the test cannot
#      drift from the README. `fresh-test.sh --print-commands` prints them and exits.
#
# Everything runs in a private mount namespace, so the chroot's mounts (binds, the tests' and the
# demo's FUSE mounts) never show on the host; on any exit, processes left in the chroot are ended
# and every mount under it is unmounted before the root filesystem is deleted.
#
# Needs root, a Debian archive and PyPI. About 5 to 10 minutes on 2 cores, most of it
# debootstrap, apt, pip and the test suite.
# Downloads are cached in /var/tmp/missionfs-fresh-test (MISSIONFS_FRESH_CACHE): debootstrap's
# packages and the chroot's apt archives, so reruns download less; delete it for a cold run.
# Nothing built is cached: every run installs and compiles from scratch.
# MISSIONFS_FRESH_KEEP=1 keeps the root filesystem (unmounted) for a look afterwards.
# Only the host's network settings go into the chroot: DNS, proxy variables and the CA
# certificates the host trusts (for a TLS-inspecting proxy), with the variables that point at them.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
SELF="$REPO/scripts/fresh-test.sh"

CACHE="${MISSIONFS_FRESH_CACHE:-/var/tmp/missionfs-fresh-test}"
MIRROR="${MISSIONFS_FRESH_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${MISSIONFS_FRESH_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SUITE=bookworm
CHECKOUT=/root/missionfs # the copy's place inside the chroot
PREREQ_TIMEOUT=15m
COMMANDS_TIMEOUT=60m

log() { printf '\n==> fresh-test: %s\n' "$*"; }
die() {
    printf 'fresh-test: %s\n' "$*" >&2
    exit 1
}

# The code block after the README marker `<!-- fresh-test:NAME`: what a user is told to type.
readme_block() {
    awk -v marker="<!-- fresh-test:$1" '
        index($0, marker) == 1 { armed = 1; next }
        armed && /^```/ { if (inside) exit; inside = 1; next }
        inside { print }
    ' "$REPO/README.md"
}

PREREQ="$(readme_block prerequisite)"
COMMANDS="$(readme_block commands)"
[ -n "$PREREQ" ] || die "README.md has no <!-- fresh-test:prerequisite --> code block"
[ -n "$COMMANDS" ] || die "README.md has no <!-- fresh-test:commands --> code block"

# Processes whose root directory is the chroot (a daemon the tests or the demo left behind).
chroot_pids() {
    local root="$1" p
    for p in /proc/[0-9]*; do
        if [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ]; then echo "${p#/proc/}"; fi
    done
}

end_chroot_processes() {
    local root="$1" pids
    pids="$(chroot_pids "$root")"
    [ -n "$pids" ] || return 0
    echo "fresh-test: ending processes left in the chroot: $(echo "$pids" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2086 # one PID a word
    kill -TERM $pids 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        pids="$(chroot_pids "$root")"
        [ -n "$pids" ] || return 0
        sleep 0.5
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

# Every mount point under the chroot, deepest first (FUSE mounts, /dev/pts under /dev, ...).
unmount_all_under() {
    local root="$1" mp
    awk -v r="$root/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while IFS= read -r mp; do
            umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ||
                echo "fresh-test: could not unmount $mp" >&2
        done
}

# Runs "$@" in the background and waits for it: bash defers a trap while a foreground command
# runs, so this is what lets a signal to this script clean up at once.
run_waiting() {
    "$@" &
    wait "$!"
}

# ---- inside the private mount namespace -------------------------------------------------------

ROOT=""
CHROOT_ENV=()

# Runs a command in the chroot with a time limit; its output also goes to the file LOG.
in_chroot() {
    local limit="$1" log="$2"
    shift 2
    timeout "$limit" chroot "$ROOT" /usr/bin/env -i "${CHROOT_ENV[@]}" "$@" </dev/null | tee "$log"
}

inner_cleanup() {
    local rc=$? root="$1"
    trap - EXIT
    end_chroot_processes "$root"
    unmount_all_under "$root"
    exit "$rc"
}

inner() {
    local work="$1" root="$1/rootfs" t0 t v
    # shellcheck disable=SC2064 # expand $root now: the trap may run after inner returns
    trap "inner_cleanup '$root'" EXIT
    trap 'exit 130' INT TERM HUP
    t0=$SECONDS

    log "debootstrap --variant=minbase $SUITE (debs cached in $CACHE/debootstrap)"
    mkdir -p "$CACHE/debootstrap" "$CACHE/apt-archives/partial"
    if ! run_waiting debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" "$SUITE" "$root" "$MIRROR" \
        >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    fi
    local t_debootstrap=$((SECONDS - t0))
    echo "debootstrap: ${t_debootstrap}s"

    # A fresh Debian 12 install's sources, and the host's network settings.
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    cat /etc/resolv.conf >"$root/etc/resolv.conf"
    if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
        mkdir -p "$root/usr/local/share/ca-certificates"
        cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    fi
    if [ -f /etc/ssl/certs/ca-certificates.crt ] && [ ! -e "$root/etc/ssl/certs/ca-certificates.crt" ]; then
        mkdir -p "$root/etc/ssl/certs"
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    ROOT="$root"
    CHROOT_ENV=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        HOME=/root LANG=C.UTF-8 TERM=dumb)
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL \
        PIP_CERT PIP_DEFAULT_TIMEOUT SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CI; do
        if [ -n "${!v:-}" ]; then CHROOT_ENV+=("$v=${!v}"); fi
    done

    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --make-rslave "$root/sys"
    mount --rbind /dev "$root/dev"
    mount --make-rslave "$root/dev"
    mount --bind "$CACHE/apt-archives" "$root/var/cache/apt/archives"
    [ -c "$root/dev/fuse" ] || die "no /dev/fuse in the chroot (the host has none?)"

    log "copying a clean checkout to $CHECKOUT"
    mkdir -p "$root$CHECKOUT"
    if [ -n "${MISSIONFS_FRESH_REF:-}" ]; then
        git -C "$REPO" archive "$MISSIONFS_FRESH_REF" | tar -x -C "$root$CHECKOUT"
    else
        git -C "$REPO" ls-files -z --cached --others --exclude-standard |
            tar -C "$REPO" --null --ignore-failed-read -T - -cf - 2>/dev/null |
            tar -x -C "$root$CHECKOUT"
    fi
    echo "$(find "$root$CHECKOUT" -type f | wc -l) files"

    log "the README's prerequisite, as root in the chroot:"$'\n'"$PREREQ"
    t=$SECONDS
    run_waiting in_chroot "$PREREQ_TIMEOUT" "$work/prerequisite.log" \
        bash -euo pipefail -c "cd $CHECKOUT && $PREREQ" ||
        die "the README's prerequisite failed in the chroot (exit $?)"
    local t_prereq=$((SECONDS - t))

    log "the README's two commands, in the checkout:"$'\n'"$COMMANDS"
    t=$SECONDS
    run_waiting in_chroot "$COMMANDS_TIMEOUT" "$work/commands.log" \
        bash -euo pipefail -c "cd $CHECKOUT && $COMMANDS" ||
        die "the README's two commands failed in the chroot (exit $?)"
    grep -q '^demo state kept in ' "$work/commands.log" || die "make demo did not run to its end"
    local t_commands=$((SECONDS - t))

    if awk -v r="$root/" 'index($5, r) == 1 && $0 ~ / - fuse(\.[^ ]*)? /' /proc/self/mountinfo | grep -q .; then
        echo "fresh-test: warning: FUSE mounts left in the chroot after the demo:" >&2
        awk -v r="$root/" 'index($5, r) == 1 && $0 ~ / - fuse(\.[^ ]*)? / { print "  " $5 }' /proc/self/mountinfo >&2
    fi
    log "PASS: the README's prerequisite and two commands on a fresh Debian $SUITE in" \
        "$((SECONDS - t0))s (debootstrap ${t_debootstrap}s, prerequisite ${t_prereq}s, commands ${t_commands}s)"
}

# ---- on the host --------------------------------------------------------------------------------

INNER_PID=""

outer() {
    local work="" rc=0
    [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
    command -v git >/dev/null || die "needs git (it copies this checkout's files)"
    git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$REPO is not a git checkout"
    command -v unshare >/dev/null || die "needs unshare (util-linux)"
    if ! command -v debootstrap >/dev/null; then
        echo "fresh-test: installing debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    mkdir -p "$CACHE"
    work="$(mktemp -d "$CACHE/run.XXXXXX")"
    # shellcheck disable=SC2064 # expand $work now
    trap "outer_cleanup '$work'" EXIT
    trap 'exit 130' INT TERM HUP
    echo "fresh-test: $REPO at $(git -C "$REPO" rev-parse --short HEAD)${MISSIONFS_FRESH_REF:+ (copying $MISSIONFS_FRESH_REF)}; work dir $work"
    # unshare execs the inner script, so INNER_PID is the process that cleans the chroot up.
    unshare --mount --propagation private "$SELF" --inner "$work" &
    INNER_PID=$!
    wait "$INNER_PID" || rc=$?
    INNER_PID=""
    return "$rc"
}

outer_cleanup() {
    local rc=$? work="$1"
    trap - EXIT
    if [ -n "$INNER_PID" ] && kill -0 "$INNER_PID" 2>/dev/null; then
        kill -TERM "$INNER_PID" 2>/dev/null || true
        wait "$INNER_PID" 2>/dev/null || true # it ends the chroot's processes and unmounts
    fi
    # The namespace's mounts are gone with it; in this namespace rootfs/dev etc. are plain folders.
    end_chroot_processes "$work/rootfs"
    if [ "${MISSIONFS_FRESH_KEEP:-0}" = 1 ]; then
        echo "fresh-test: root filesystem kept in $work/rootfs"
    elif awk -v r="$work/" 'index($5, r) == 1' /proc/self/mountinfo | grep -q .; then
        echo "fresh-test: mounts remain under $work; not deleting it" >&2
    else
        rm -rf --one-file-system "$work"
    fi
    exit "$rc"
}

if [ "${1:-}" = "--print-commands" ]; then
    printf '%s\n' "$PREREQ" "$COMMANDS"
elif [ "${1:-}" = "--inner" ]; then
    inner "$2"
else
    outer
fi
