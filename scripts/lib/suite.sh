# Shared by the Python suites' runners (scripts/test-e2e.sh, test-browser.sh, test-helm.sh):
# the server binary check, the virtualenv, and a scratch directory whose process groups are
# ended when the runner exits. Source it; it defines functions only.

# require_server_bin NAME: checks $CASOLA_AUTH_BIN (default target/debug/casola-auth) and
# exports it as an absolute path.
require_server_bin() {
  local name="$1" bin="${CASOLA_AUTH_BIN:-target/debug/casola-auth}"
  if [[ ! -x "$bin" ]]; then
    echo "$name: server binary not found at $bin (build it first: cargo build)" >&2
    exit 2
  fi
  CASOLA_AUTH_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
  export CASOLA_AUTH_BIN
}

# ensure_venv VENV REQUIREMENTS: creates the virtualenv when missing and installs the pinned
# requirements, again only when the file changed since the last successful install.
ensure_venv() {
  local venv="$1" requirements="$2"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
  fi
  local stamp="$venv/.casola-$(basename "$(dirname "$requirements")")-requirements"
  if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
  fi
}

# scratch_dir PREFIX: makes a scratch directory for one run (database clusters, pytest's
# tmp_path) in SCRATCH, traversable so that the `postgres` user reaches its data directory
# inside, and exports E2E_PIDFILE: every process group the harness starts is written there,
# and whatever is still alive when the runner exits (even if pytest was killed) is ended,
# group by group, before the directory is removed.
scratch_dir() {
  SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
  chmod 711 "$SCRATCH"
  E2E_PIDFILE="$SCRATCH/pids"
  : >"$E2E_PIDFILE"
  export E2E_PIDFILE
  trap end_scratch EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

end_scratch() {
  local pid
  while read -r pid; do
    [[ -n "$pid" ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      sleep 1
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done <"$E2E_PIDFILE"
  rm -rf "$SCRATCH"
}
