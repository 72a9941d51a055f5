#!/usr/bin/env bash
# Makes sure the servers the tests talk to are running on loopback: PostgreSQL on
# 127.0.0.1:5432 (user postgres, trust auth). A server that is down is started from
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
