#!/usr/bin/env bash
# Installs tradebus with its test extra into .venv, makes PostgreSQL available, runs the tests.
# This is the README's test command; CI runs exactly this. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

if [ -z "${TRADEBUS_TEST_PG_URL:-}" ]; then
  if url=$(bash tests/pg-up.sh); then
    export TRADEBUS_TEST_PG_URL="$url"
  else
    echo "run.sh: PostgreSQL is not available; its tests will fail in CI and be skipped elsewhere" >&2
  fi
fi
# In CI the PostgreSQL tests must fail, not skip, when the server is missing.
if [ "${CI:-}" = "true" ]; then export TRADEBUS_REQUIRE_PG=1; fi

exec .venv/bin/python -m pytest "$@"
