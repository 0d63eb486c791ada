#!/usr/bin/env bash
# Makes a local PostgreSQL server available for the tests and prints the admin URL they use.
#
# Uses the Debian cluster when there is one (starting it if it is down), installs Debian's
# postgresql package when there is none (root only), and creates the `tradebus` role. Prints the
# SQLAlchemy URL on stdout; progress goes to stderr. Exits non-zero if no server can be had.
set -euo pipefail

ROLE=tradebus
PASSWORD=tradebus

say() { echo "pg-up: $*" >&2; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -n -u postgres "$@"; fi; }

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  if [ "$(id -u)" != 0 ]; then
    say "no PostgreSQL cluster here and not root: cannot install one"; exit 1
  fi
  say "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

read -r VERSION CLUSTER PORT STATUS _ < <(pg_lsclusters -h | head -n 1)
if [ "$STATUS" != "online" ]; then
  say "starting cluster $VERSION/$CLUSTER on port $PORT"
  if [ "$(id -u)" = 0 ]; then pg_ctlcluster "$VERSION" "$CLUSTER" start >&2; else sudo -n pg_ctlcluster "$VERSION" "$CLUSTER" start >&2; fi
fi

for _ in $(seq 1 100); do
  as_postgres pg_isready -q -p "$PORT" && break
  sleep 0.2  # waiting on the server's own readiness probe, bounded at 20 s
done
as_postgres pg_isready -q -p "$PORT" || { say "server on port $PORT did not become ready"; exit 1; }

as_postgres psql -q -p "$PORT" -d postgres -v ON_ERROR_STOP=1 >&2 <<SQL
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN SUPERUSER PASSWORD '$PASSWORD';
  END IF;
END\$\$;
SQL
echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/postgres"
