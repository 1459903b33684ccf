#!/usr/bin/env bash
# Runs shellcheck on every shell script of the repository (part of `make lint`): all *.sh files,
# .ci/run, and files with a sh/bash shebang under scripts/, vagrant/ and scraper/examples/.
# Files are the tracked and untracked-but-not-ignored ones (git), or a walk of the tree when
# there is no git (a copied checkout). `--list` prints the files instead of checking them.
set -euo pipefail
cd "$(dirname "$0")/.."

list_candidates() {
    if command -v git >/dev/null 2>&1 && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard
    else
        find . \( -name .git -o -name .venv -o -name .vagrant -o -name node_modules \) -prune \
            -o -type f -print0 | sed -z 's|^\./||'
    fi
}

is_shell_script() {
    case "$1" in
        *.sh | .ci/run) return 0 ;;
        scripts/* | vagrant/* | scraper/examples/*)
            head -n 1 "$1" 2>/dev/null | grep -Eq '^#![[:space:]]*/[^[:space:]]*/(env[[:space:]]+(-S[[:space:]]*)?)?(ba|da)?sh([[:space:]]|$)' ;;
        *) return 1 ;;
    esac
}

files=()
while IFS= read -r -d '' f; do
    [ -f "$f" ] || continue # deleted in the work tree but still in the index
    if is_shell_script "$f"; then files+=("$f"); fi
done < <(list_candidates | sort -zu)

if [ "${1:-}" = "--list" ]; then
    printf '%s\n' "${files[@]}"
    exit 0
fi
echo "shellcheck: ${#files[@]} scripts"
shellcheck "${files[@]}"
