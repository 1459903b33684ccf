#!/usr/bin/env bash
# The main job, end to end on the embedded local store: mount the demo mission, look at what is
# pending, complete two tasks with nothing but shell tools, finish the mission with the reference
# worker (synthetic source, progress bar), show the status, unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
MFS="$PWD/.venv/bin/missionfs"
PY="$PWD/.venv/bin/python"
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

for i in 1 2; do
    rel="$(cd pending && find . -type f | sort | head -n 1 | cut -c3-)"
    step "mv 'pending/$rel' 'claimed/$rel'   # claim: exactly one mv wins"
    mv "pending/$rel" "claimed/$rel"
    step "cat 'claimed/$rel'"; cat "claimed/$rel"
    step "printf ... > tmp/result-$i && mv tmp/result-$i 'done/$rel'   # commit"
    printf 'name,address\nDemo place %s,%s\n' "$i" "$rel" > "tmp/result-$i"
    mv "tmp/result-$i" "done/$rel"
done

step "python -m scraper $MNT --source synthetic --workers 4 --delay 0.5   # the reference worker"
"$PY" -m scraper "$MNT" --source synthetic --workers 4 --delay 0.5

step "find done -type f | wc -l"; find "done" -type f | wc -l
step "cat status"; cat status
cd /
step missionfs status "$MNT"; "$MFS" status "$MNT"
step missionfs umount "$MNT"; "$MFS" umount "$MNT"
step "find $STATE/scraped-tiles -type f   # plain files, readable without the daemon"
find "$STATE/scraped-tiles" -type f
step missionfs status examples/demo.toml --state "$STATE"
"$MFS" status "$MISSION" --state "$STATE"
printf '\ndemo state kept in %s\n' "$STATE"
