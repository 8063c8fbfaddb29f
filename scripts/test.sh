#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine (root or not):
#   1. makes sure PostgreSQL's server binaries are installed (the Rust tests start their own
#      throwaway cluster from them; TEST_DATABASE_URL points them at an existing server instead);
#   2. cargo test: unit tests, the store conformance suite on both stores, gRPC integration
#      tests over loopback;
#   3. the end-to-end suite: real Envoy, grpcurl and the OpenAI SDK against the real binary
#      (scripts/test-e2e.sh, its own virtualenv);
#   4. the console in a real browser: headless Debian Chromium driven by Playwright against
#      the real binary on PostgreSQL (scripts/test-browser.sh; screenshots in
#      target/browser-screenshots/);
#   5. the Helm chart: lint, render, schema validation, checkov (scripts/test-helm.sh);
#   6. checks that no server process was left behind.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n== %s\n' "$*"; }

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
if ! have_postgres; then
    say "installing PostgreSQL server binaries"
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "PostgreSQL server binaries (initdb, postgres) are needed: install postgresql" >&2
        exit 1
    fi
fi

say "cargo test (unit, store conformance on memory and Postgres, gRPC over loopback)"
cargo test --locked --all-targets

# The end-to-end suites run the server binary `cargo test` has just built for the integration
# tests (target/debug/casola-auth: the same source and features). A separate `cargo build --bins`
# would compile 68 crates a second time (about 2 min: tokio, h2, figment and the crates built on
# them), because the dev-dependencies turn on features of shared crates (tokio's test-util, h2's
# unstable, figment's test) that the binary never uses.
export CASOLA_AUTH_BIN="$PWD/target/debug/casola-auth"
if [ ! -x "$CASOLA_AUTH_BIN" ]; then
    echo "cargo test left no $CASOLA_AUTH_BIN to run the end-to-end suites on" >&2
    exit 1
fi

say "end to end: Envoy ext_authz, OpenAI SDK, grpcurl"
VENV=target/py/e2e bash scripts/test-e2e.sh

say "console in a real browser: Chromium + Playwright (screenshots in target/browser-screenshots/)"
VENV=target/py/browser bash scripts/test-browser.sh

say "Helm chart: lint, render, kubernetes-validate, checkov"
VENV=target/py/helm bash scripts/test-helm.sh

say "no process left behind"
sleep 1
# Our servers, clusters and proxies only (not a compiler that happens to name the target dir).
left=$(pgrep -af 'casola-auth-pg-|casola-e2e|casola-browser|target/debug/casola-auth|envoy' \
    | grep -vE 'pgrep|rustc|cargo|clippy' || true)
if [ -n "$left" ]; then
    echo "processes left behind:" >&2
    echo "$left" >&2
    exit 1
fi
echo "none"
