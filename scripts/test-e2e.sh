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

VENV="${VENV:-.venv}"
BIN="${CASOLA_AUTH_BIN:-target/debug/casola-auth}"

if [[ ! -x "$BIN" ]]; then
  echo "test-e2e: server binary not found at $BIN (build it first: cargo build)" >&2
  exit 2
fi
export CASOLA_AUTH_BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "test-e2e: PostgreSQL server binaries not found (Debian: apt-get install postgresql)" >&2
  exit 2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

# A scratch directory for the run (database clusters, pytest's tmp_path), removed at the end;
# traversable so that the `postgres` user can reach its data directory inside.
E2E_TMP="$(mktemp -d "${TMPDIR:-/tmp}/casola-e2e-run.XXXXXX")"
chmod 711 "$E2E_TMP"
# Every process group the harness starts is written here; whatever is still alive when pytest
# ends (even if it was killed) is ended by pid, group by group.
PIDFILE="$E2E_TMP/pids"
: >"$PIDFILE"
export E2E_PIDFILE="$PIDFILE"
cleanup() {
  local pid
  while read -r pid; do
    [[ -n "$pid" ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      sleep 1
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done <"$PIDFILE"
  rm -rf "$E2E_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TMPDIR="$E2E_TMP" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/e2e "$@"
