#!/usr/bin/env bash
# Fuzzes the REST API against its own OpenAPI document with schemathesis: a real
# `cfm serve` on a free loopback port, once on the embedded database and once on a
# scratch PostgreSQL database. Fails on any 5xx and on any answer the document does
# not describe (status, content type or body schema). `GET /events` is left out: it is a
# stream that never ends (its own tests cover it).
#
# Needs target/debug/cfm (built by `cargo test`) and the built-in plugins.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cfm="$root/target/debug/cfm"
pg_admin="${CFM_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
examples="${CFM_FUZZ_EXAMPLES:-50}"

python3 -m pip install --quiet --disable-pip-version-check "schemathesis==4.32.5"
st="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/st"

work="$(mktemp -d)"
pid=""
database=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    [ -n "$database" ] && psql -q -d "$pg_admin" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
    rm -rf "$work"
}
trap cleanup EXIT

fuzz() {
    local label="$1"
    shift
    local dir="$work/$label"
    mkdir -p "$dir"
    "$cfm" serve --data-dir "$dir/data" --listen 127.0.0.1:0 "$@" >"$dir/out" 2>"$dir/log" &
    pid=$!
    local base=""
    for _ in $(seq 1 100); do
        base="$(sed -n 's/^cfm listening on //p' "$dir/out")"
        [ -n "$base" ] && [ -s "$dir/data/admin.token" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$base" ] || { echo "cfm serve did not start" >&2; cat "$dir/log" >&2; exit 1; }
    echo "==> schemathesis against $label ($base)"
    # From the scratch folder: schemathesis keeps its state in ./.schemathesis.
    (cd "$work" && "$st" run "$base/api/v1alpha1/openapi.json" --url "$base/api/v1alpha1" \
        -H "Authorization: Bearer $(cat "$dir/data/admin.token")" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --exclude-path /events \
        --max-examples "$examples" --generation-deterministic --no-color) \
        || { echo "--- cfm serve log ---" >&2; tail -n 50 "$dir/log" >&2; exit 1; }
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
}

fuzz sqlite
database="cfm_fuzz_$$"
psql -q -d "$pg_admin" -c "CREATE DATABASE $database"
fuzz postgres --database-url "${pg_admin%/*}/$database"
