#!/usr/bin/env bash
# Builds cfm and its built-in plugins, then runs the whole management plane in one
# process on the embedded default (SQLite + database-backed queue + in-process agent
# host). Extra arguments go to `cfm serve`, e.g. `scripts/run.sh --data-dir /tmp/cfm`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/build-plugins.sh
cargo build --locked --bin cfm
exec target/debug/cfm serve "$@"
