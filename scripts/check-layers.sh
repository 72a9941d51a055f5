#!/usr/bin/env bash
# Checks the layering rules the compiler cannot (they are modules of one crate), and that
# docs/architecture.md's "Where is X?" table names only paths that exist. Between crates the
# compiler keeps the layers itself: a cycle between crates does not build.
#
#   manager/src/provision  never imports  manager/src/tenant or manager/src/api
#       (the engine reports to the tenant manager through OrchestrationHooks)
#   manager/src/store      never imports  provision, tenant or api
#   host/src/capability    never imports  host/src/runtime
#       (capabilities are implemented on capability::Capabilities, linked by projection)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
failed=0

# refuse <folder> <what it may not name> <why>
refuse() {
    local folder="$1" pattern="$2" why="$3" hits
    hits="$(grep -rnE "$pattern" "$folder" --include='*.rs' || true)"
    if [[ -n "$hits" ]]; then
        echo "layering: $why" >&2
        echo "$hits" >&2
        failed=1
    fi
}

refuse manager/src/provision '(crate|super)::(tenant|api)\b' \
    "the provision engine may not import the tenant manager or the API"
refuse manager/src/store '(crate|super)::(provision|tenant|api)\b' \
    "the store may not import the layers above it"
refuse host/src/capability '(crate|super)::runtime\b' \
    "capabilities may not import the runtime that links them"

# Every `path` in the "Where is X?" table (second column, in backticks) must exist.
table="$(sed -n '/^## Where is X?/,/^## /p' docs/architecture.md)"
rows="$(grep -c '^| ' <<<"$table" || true)"
if (( rows < 15 )); then
    echo "docs/architecture.md: the \"Where is X?\" table has $((rows > 2 ? rows - 2 : 0)) rows, fewer than 15" >&2
    failed=1
fi
while IFS= read -r path; do
    if [[ ! -e "$path" ]]; then
        echo "docs/architecture.md: \"Where is X?\" names $path, which does not exist" >&2
        failed=1
    fi
done < <(grep '^| ' <<<"$table" | awk -F'|' 'NR > 2 {print $3}' | grep -o '`[^`]*`' | tr -d '`' | sed 's/:.*//')

if (( failed )); then
    exit 1
fi
echo "layers: ok"
