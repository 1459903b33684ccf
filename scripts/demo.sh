#!/usr/bin/env bash
# The main job, end to end on the embedded local store: mount the demo mission, look at what is
# pending, complete a few tasks with nothing but shell tools, show the status, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
MFS="$PWD/.venv/bin/missionfs"
MISSION="$PWD/examples/demo.toml"
WORK="$(mktemp -d /tmp/missionfs-demo.XXXXXX)"
MNT="$WORK/mnt"
STATE="$WORK/state"
mkdir -p "$MNT"

cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then "$MFS" umount "$MNT" || fusermount3 -u -z "$MNT"; fi
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step missionfs mount examples/demo.toml "$MNT" --state "$STATE"
"$MFS" mount "$MISSION" "$MNT" --state "$STATE"
cd "$MNT"

step ls; ls
step ls pending/; ls pending/
step "find pending -type f | wc -l"; find pending -type f | wc -l

for i in 1 2 3 4 5; do
    rel="$(cd pending && find . -type f | sort | head -n 1 | cut -c3-)"
    step "mv 'pending/$rel' 'claimed/$rel'   # claim: exactly one mv wins"
    mv "pending/$rel" "claimed/$rel"
    step "cat 'claimed/$rel'"; cat "claimed/$rel"
    step "printf ... > tmp/result-$i && mv tmp/result-$i 'done/$rel'   # commit"
    printf 'name,address\nDemo place %s,%s\n' "$i" "$rel" > "tmp/result-$i"
    mv "tmp/result-$i" "done/$rel"
done

rel="$(cd pending && find . -type f | sort | head -n 1 | cut -c3-)"
step "printf 'name,address\\n...' > 'done/$rel'   # a direct write is committed on close"
printf 'name,address\nDirect write,%s\n' "$rel" > "done/$rel"

step "echo oops > 'done/$rel'   # a witness is immutable"
echo oops > "done/$rel" || true
rel="$(cd pending && find . -type f | sort | head -n 1 | cut -c3-)"
step "printf 'name,addr\\nno newline' > 'done/$rel'   # truncated: refused, stays pending"
printf 'name,addr\nno newline' > "done/$rel" || true
step "ls 'pending/$rel'"; ls "pending/$rel"

step "find done -type f"; find done -type f
step "cat status"; cat status
cd /
step missionfs status "$MNT"; "$MFS" status "$MNT"
step missionfs umount "$MNT"; "$MFS" umount "$MNT"
step "find $STATE/scraped-tiles -type f   # plain files, readable without the daemon"
find "$STATE/scraped-tiles" -type f
step missionfs status examples/demo.toml --state "$STATE"
"$MFS" status "$MISSION" --state "$STATE"
printf '\ndemo state kept in %s\n' "$STATE"
