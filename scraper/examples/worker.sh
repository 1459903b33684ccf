#!/usr/bin/env bash
# A missionfs worker in bash: find, mv, rm and redirection are the whole protocol.
# Usage: worker.sh MNT [GENERATOR [ARG...]]
#   GENERATOR reads a task descriptor on stdin and prints the result CSV on stdout; the default
#   is the synthetic source (python3 -m scraper.synthetic). Any command works, e.g. an HTTP API:
#   worker.sh /mnt/m curl -sf --data-binary @- https://scraper.example/run
# Prints "done REL" for every task it commits; stops when nothing is pending.
set -uo pipefail
mnt="${1:?usage: worker.sh MNT [GENERATOR [ARG...]]}"
shift
gen=("$@")
[ "${#gen[@]}" -gt 0 ] || gen=(python3 -m scraper.synthetic)
cd "$mnt" || exit 2
me="sh-$$"
seq=0
declare -A failed=()

while :; do
    mapfile -t tasks < <(cd pending && find . -type f)
    n="${#tasks[@]}"
    tried=0
    for ((i = 0; i < n; i++)); do
        rel="${tasks[(i + $$) % n]#./}" # start at a per-worker offset: fewer lost races
        [ -z "${failed[$rel]:-}" ] || continue
        tried=1
        mv "pending/$rel" "claimed/$rel" 2>/dev/null || continue # lost the race: next one
        tmp="tmp/$me-$((seq += 1)).csv"
        if "${gen[@]}" <"claimed/$rel" >"$tmp" && mv "$tmp" "done/$rel"; then
            echo "done $rel"
        else
            echo "$me: $rel failed; claim released" >&2
            failed[$rel]=1
            rm -f "claimed/$rel" "$tmp" # give the task back at once
        fi
    done
    [ "$tried" -eq 1 ] || break
done
