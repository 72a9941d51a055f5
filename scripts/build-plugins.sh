#!/usr/bin/env bash
# Builds the WebAssembly plugins and lays them out for the agent host:
# target/plugins/<name>.wasm plus target/plugins/plugins.toml, generated from
# plugins/builtin.toml with each plugin's sha256 filled in.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/plugins"

# Idempotent: a no-op when the target is already installed.
rustup target add wasm32-wasip2

# plugins/.cargo/config.toml selects wasm32-wasip2 and the repository's shared
# target directory, so this waits for any concurrent host build's lock.
cargo build --release

# Ask cargo rather than assume, so CARGO_TARGET_DIR is honoured.
target_dir="$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
built="$target_dir/wasm32-wasip2/release"
mkdir -p "$target_dir/plugins"
out="$(cd "$target_dir/plugins" && pwd)"

# <name in builtin.toml>=<crate's artifact name>
plugins=(
    vault=cfm_plugin_vault
    k8s=cfm_plugin_k8s
    dns=cfm_plugin_dns
    edc-v=cfm_plugin_edc_v
    slow=cfm_plugin_example_slow
    hostile=cfm_plugin_example_hostile
    noop=cfm_plugin_example_noop
)

config="$out/plugins.toml"
tmp="$config.tmp"
cp "$root/plugins/builtin.toml" "$tmp"
for entry in "${plugins[@]}"; do
    name="${entry%%=*}"
    cp "$built/${entry#*=}.wasm" "$out/$name.wasm"
    digest="$(sha256sum "$out/$name.wasm" | cut -d' ' -f1)"
    sed -i "s/\"@sha256:$name\"/\"$digest\"/" "$tmp"
    printf '%-11s %8d bytes  sha256:%s\n' "$name" "$(stat -c %s "$out/$name.wasm")" "$digest"
done

# A placeholder left over means the template names a plugin this script does not build.
if grep -nE '"@sha256:[A-Za-z0-9_-]+"' "$tmp" >&2; then
    rm -f "$tmp"
    echo "error: plugins/builtin.toml has placeholders for plugins that were not built" >&2
    exit 1
fi
mv "$tmp" "$config"
echo "plugin configuration: $config"
