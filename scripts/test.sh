#!/usr/bin/env bash
# Runs every check cfm has, from a fresh machine: installs what the tests need
# (the wasm32-wasip2 target, a running PostgreSQL), builds the plugins, then formats, lints and tests
# the host workspace and the plugin workspace.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "==> services"
scripts/services.sh

echo "==> building plugins"
scripts/build-plugins.sh

echo "==> format"
cargo fmt --all --check
(cd plugins && cargo fmt --all --check)

echo "==> layers"
scripts/check-layers.sh

echo "==> lint"
cargo clippy --all-targets --locked -- -D warnings
(cd plugins && cargo clippy --release --locked -- -D warnings)

echo "==> plugin SDK and edc-v tests"
(cd plugins && cargo test --locked -p cfm-plugin-sdk -p cfm-plugin-edc-v --target "$(rustc -vV | sed -n 's/^host: //p')")

echo "==> tests"
cargo test --locked --workspace

echo "==> API fuzzing against the OpenAPI document"
scripts/api-fuzz.sh

echo "==> deployment manifests"
scripts/check-deploy.sh
