#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster on 127.0.0.1:55432 (our own, never the system one) for the store
# tests and prints the URL to export:
#
#   eval "$(.ci/postgres.sh)"   # sets OPENGSLB_TEST_POSTGRES_URL
#
# Needs the Debian `postgresql` package (apt-get install -y postgresql) and
# root (the cluster runs as the `postgres` user). Idempotent: an already
# running cluster on the port is reused.
set -euo pipefail

port=${PGPORT:-55432}
url="postgres://postgres:opengslb@127.0.0.1:${port}/opengslb_test"

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -n "$bindir" ] || { echo "postgresql is not installed (apt-get install -y postgresql)" >&2; exit 1; }

if ! su postgres -c "$bindir/pg_isready -q -h 127.0.0.1 -p $port" 2>/dev/null; then
    data=/tmp/opengslb-pg
    rm -rf "$data"
    install -d -o postgres -g postgres "$data"
    su postgres -c "$bindir/initdb -D $data -U postgres --auth=trust" >/dev/null
    su postgres -c "$bindir/pg_ctl -D $data -l $data/log -w -o '-h 127.0.0.1 -p $port -k /tmp' start" >&2
fi
su postgres -c "$bindir/psql -q -h 127.0.0.1 -p $port -U postgres -c \"ALTER USER postgres PASSWORD 'opengslb'\"" >&2
su postgres -c "$bindir/psql -q -h 127.0.0.1 -p $port -U postgres -tc \"SELECT 1 FROM pg_database WHERE datname = 'opengslb_test'\"" | grep -q 1 \
    || su postgres -c "$bindir/psql -q -h 127.0.0.1 -p $port -U postgres -c 'CREATE DATABASE opengslb_test'" >&2
echo "export OPENGSLB_TEST_POSTGRES_URL=$url"
