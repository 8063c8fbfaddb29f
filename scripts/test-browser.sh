#!/usr/bin/env bash
# Browser tests of the console (tests/browser): headless Debian Chromium driven by Playwright
# for Python, against the real binary on a throwaway PostgreSQL. Installs Chromium with apt-get
# when missing (as root) and the pinned Python packages into a virtualenv; does not build the
# server. Screenshots of each step go to target/browser-screenshots/.
#
#   VENV              virtualenv to create or reuse (default target/py/browser)
#   CASOLA_AUTH_BIN   server binary (default target/debug/casola-auth)
#   CHROMIUM_BIN      browser (default /usr/bin/chromium)
#   extra arguments go to pytest, e.g. scripts/test-browser.sh -k revoke -x
#
# Leaves no process behind (the same pid-file cleanup as scripts/test-e2e.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-target/py/browser}"
BIN="${CASOLA_AUTH_BIN:-target/debug/casola-auth}"
CHROMIUM="${CHROMIUM_BIN:-/usr/bin/chromium}"

if [[ ! -x "$BIN" ]]; then
  echo "test-browser: server binary not found at $BIN (build it first: cargo build)" >&2
  exit 2
fi
export CASOLA_AUTH_BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

if [[ ! -x "$CHROMIUM" ]]; then
  if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "test-browser: installing Debian's chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "test-browser: $CHROMIUM not found (Debian: apt-get install chromium)" >&2
    exit 2
  fi
fi
export CHROMIUM_BIN="$CHROMIUM"

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/browser/requirements.txt

BROWSER_TMP="$(mktemp -d "${TMPDIR:-/tmp}/casola-browser-run.XXXXXX")"
# Traversable, so that the `postgres` user can reach its data directory inside.
chmod 711 "$BROWSER_TMP"
PIDFILE="$BROWSER_TMP/pids"
: >"$PIDFILE"
export E2E_PIDFILE="$PIDFILE"
export E2E_LOG_DIR="${E2E_LOG_DIR:-$PWD/.tmp/browser-logs}"
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
  rm -rf "$BROWSER_TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Bounded: the suite takes well under a minute here; ten minutes means something hangs.
TMPDIR="$BROWSER_TMP" timeout 600 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/browser "$@"
