#!/usr/bin/env bash
# A missionfs worker in bash: find, mv, rm and redirection are the whole protocol.
# Usage: worker.sh MNT [GENERATOR [ARG...]]
#   GENERATOR reads a task descriptor on stdin and prints the result CSV on stdout; the default
#   is the synthetic source (python3 -m scraper.synthetic). Any command works, e.g. an HTTP API:
#   worker.sh /mnt/m curl -sf --data-binary @- https://scraper.example/run
# Prints "done REL" for every task it commits; stops when nothing is pending. It lists pending/
# again after every task: in a fleet the listing moves while a task runs (other workers'
# claims, each node's share), and a stale list means claims of tasks another node has just
# taken (lost races, each an S3 PUT and GET). A claim refused with EAGAIN (strict claims while
# S3 is unreachable) is retried with backoff up to 30 s.
set -uo pipefail
mnt="${1:?usage: worker.sh MNT [GENERATOR [ARG...]]}"
shift
gen=("$@")
[ "${#gen[@]}" -gt 0 ] || gen=(python3 -m scraper.synthetic)
cd "$mnt" || exit 2
me="sh-$$"
seq=0
wait_ms=0 # backoff while claims get EAGAIN; 0: claims work
declare -A failed=()

while :; do
    mapfile -t tasks < <(cd pending && find . -type f)
    n="${#tasks[@]}"
    tried=0
    for ((i = 0; i < n; i++)); do
        rel="${tasks[(i + $$) % n]#./}" # start at a per-worker offset: fewer lost races
        [ -z "${failed[$rel]:-}" ] || continue
        tried=1
        if ! err=$(LC_ALL=C mv "pending/$rel" "claimed/$rel" 2>&1); then
            [[ $err == *"temporarily unavailable"* ]] || continue # lost the race: next one
            [ "$wait_ms" -gt 0 ] || echo "$me: claims refused (S3 unreachable?); backing off" >&2
            wait_ms=$((wait_ms ? (wait_ms < 15000 ? wait_ms * 2 : 30000) : 500))
            j=$((wait_ms / 2 + RANDOM % (wait_ms / 2))) # jitter: workers do not retry in step
            sleep "$((j / 1000)).$(printf %03d $((j % 1000)))"
            break
        fi
        wait_ms=0
        tmp="tmp/$me-$((seq += 1)).csv"
        if "${gen[@]}" <"claimed/$rel" >"$tmp" && mv "$tmp" "done/$rel"; then
            echo "done $rel"
        else
            echo "$me: $rel failed; claim released" >&2
            failed[$rel]=1
            rm -f "claimed/$rel" "$tmp" # give the task back at once
        fi
        break # list again: pending/ moved while we worked (other claims, the fleet's shares)
    done
    [ "$tried" -eq 1 ] || break
done
