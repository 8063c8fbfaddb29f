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
# Leaves no process behind (scripts/lib/suite.sh ends every process group it started).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/suite.sh
source scripts/lib/suite.sh

VENV="${VENV:-target/py/browser}"
CHROMIUM="${CHROMIUM_BIN:-/usr/bin/chromium}"
require_server_bin test-browser

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

ensure_venv "$VENV" tests/browser/requirements.txt
scratch_dir casola-browser-run
export E2E_LOG_DIR="${E2E_LOG_DIR:-$PWD/.tmp/browser-logs}"

# Bounded: the suite takes well under a minute here; ten minutes means something hangs.
TMPDIR="$SCRATCH" timeout 600 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/browser "$@"
