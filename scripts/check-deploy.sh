#!/usr/bin/env bash
# Renders deploy/kubernetes (kustomize, as `kubectl apply -k` would) with the plugin
# configuration of this checkout's build, validates every object against the Kubernetes
# API schemas (kubernetes-validate, strict: unknown fields are errors), and checks that
# every flag and CFM_* variable the manifests give cfm is one `cfm <command> --help` lists.
#
# Needs target/plugins (scripts/build-plugins.sh) and a built target/debug/cfm. Installs
# kubectl (Debian's kubernetes-client) and kubernetes-validate (PyPI, in a virtual
# environment of its own) when missing.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

# The Kubernetes version the objects must be valid for: the oldest one still supported
# upstream when this was written.
kubernetes_version=1.32.0

if ! command -v kubectl >/dev/null; then
    echo "installing kubectl (Debian kubernetes-client)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q kubernetes-client
fi
validate_home="${HOME}/.local/share/cfm-test/kubernetes-validate"
if [ ! -x "$validate_home/bin/kubernetes-validate" ]; then
    echo "installing kubernetes-validate (PyPI) into $validate_home"
    python3 -m venv "$validate_home"
    "$validate_home/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
fi

cfm="$root/target/debug/cfm"
plugins="$root/target/plugins/plugins.toml"
for needed in "$cfm" "$plugins"; do
    if [ ! -e "$needed" ]; then
        echo "error: $needed is missing: build cfm and scripts/build-plugins.sh first" >&2
        exit 1
    fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp deploy/kubernetes/*.yaml "$work/"
# As the Dockerfile lays it out: each component by its absolute path in the image.
sed 's#^path = "#path = "/opt/cfm/plugins/#' "$plugins" >"$work/plugins.toml"
kubectl kustomize "$work" >"$work/rendered.yaml"
echo "rendered $(grep -c '^kind:' "$work/rendered.yaml") objects"
"$validate_home/bin/kubernetes-validate" --strict --quiet -k "$kubernetes_version" "$work/rendered.yaml"

# Each container's command (first argument) with the flags and variables it is given.
"$validate_home/bin/python" - "$work/rendered.yaml" "$cfm" <<'PY'
import re, subprocess, sys, yaml

rendered, cfm = sys.argv[1], sys.argv[2]
failed = False
for doc in yaml.safe_load_all(open(rendered)):
    if not doc or doc.get("kind") != "Deployment":
        continue
    for container in doc["spec"]["template"]["spec"]["containers"]:
        args = container.get("args", [])
        command = args[0]
        help_text = subprocess.run([cfm, command, "--help"], capture_output=True, text=True, check=True).stdout
        flags = set(re.findall(r"--[a-z0-9-]+", help_text))
        variables = set(re.findall(r"env: (CFM_[A-Z0-9_]+)", help_text))
        for flag in (a for a in args if a.startswith("--")):
            if flag not in flags:
                print(f"{doc['metadata']['name']}: cfm {command} has no flag {flag}", file=sys.stderr)
                failed = True
        for env in container.get("env", []):
            if env["name"].startswith("CFM_") and env["name"] not in variables:
                print(f"{doc['metadata']['name']}: cfm {command} reads no {env['name']}", file=sys.stderr)
                failed = True
        print(f"{doc['metadata']['name']}: cfm {command}: {len(args) - 1} arguments and {len(container.get('env', []))} variables known")
sys.exit(1 if failed else 0)
PY
echo "deploy/kubernetes: valid for Kubernetes $kubernetes_version"
