#!/usr/bin/env bash
# End-to-end tests: a real casola-auth, real Envoy, real PostgreSQL, the real OpenAI SDK and
# grpcurl (tests/e2e). Installs the pinned Python tools into a virtualenv; does not build the
# server.
#
#   VENV              virtualenv to create or reuse (default .venv)
#   CASOLA_AUTH_BIN   server binary (default target/debug/casola-auth)
#   extra arguments go to pytest, e.g. scripts/test-e2e.sh -k grpcurl -x
#
# Needs python3 (with venv) and PostgreSQL's server binaries (initdb, postgres: on PATH or in
# /usr/lib/postgresql/*/bin); runs as root (PostgreSQL is then started as the `postgres`
# user) or as any user. Leaves no process behind.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/suite.sh
source scripts/lib/suite.sh

VENV="${VENV:-.venv}"
require_server_bin test-e2e

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "test-e2e: PostgreSQL server binaries not found (Debian: apt-get install postgresql)" >&2
  exit 2
fi

ensure_venv "$VENV" tests/e2e/requirements.txt
scratch_dir casola-e2e-run

TMPDIR="$SCRATCH" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/e2e "$@"
