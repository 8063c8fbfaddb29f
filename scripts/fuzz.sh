#!/usr/bin/env bash
# Bounded fuzzing of the parsers (docs/reliability.md, "Fuzzing"): builds every cargo-fuzz
# target in fuzz/ once, then runs each for a fixed budget (FUZZ_RUNS, default 100000, seed 1)
# from its committed seeds in fuzz/corpus/<target>/ only (and dictionary fuzz/<target>.dict,
# if any); time-bounded runs (FUZZ_SECONDS) also start from, and add to, what earlier such
# runs kept in target/fuzz/corpus/<target>/.
# Fails on the first crash, panic, timeout or out-of-memory; the input that did it is left in
# target/fuzz/artifacts/<target>/ (replay: the target binary with that file as argument).
#
#   FUZZ_SECONDS=60 bash scripts/fuzz.sh            # longer runs
#   FUZZ_TARGETS="token config" bash scripts/fuzz.sh  # some targets only
#   FUZZ_SANITIZER=address bash scripts/fuzz.sh       # with AddressSanitizer
#
# The toolchain is stable: cargo-fuzz needs unstable compiler flags (sanitizer coverage),
# allowed here with RUSTC_BOOTSTRAP=1 for this build only. The default sanitizer is none:
# the code under test is safe Rust (a fault is a panic, which libFuzzer catches), and
# AddressSanitizer doubles the cold build CI pays.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# By default a fixed budget: FUZZ_RUNS executions per target from a fixed seed, starting from
# the committed seeds only, so that a CI run is reproducible (the same inputs every time, on
# any machine speed). FUZZ_SECONDS=N switches to time-bounded exploration, which keeps what it
# finds under target/fuzz/corpus/ for later runs.
runs="${FUZZ_RUNS:-100000}"
seed="${FUZZ_SEED:-1}"
seconds="${FUZZ_SECONDS:-}"
sanitizer="${FUZZ_SANITIZER:-none}"
targets="${FUZZ_TARGETS:-token credential scopes check_request page_token config}"
out=target/fuzz
triple="$(rustc -vV | sed -n 's/^host: //p')"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version '^0.13'
fi

# cargo-fuzz has no --locked: check fuzz/Cargo.lock the way the main build's --locked does, so
# that a dependency added to the main crate is written to the fuzz lockfile in the same commit
# instead of being resolved afresh in every build.
if ! cargo tree --locked --depth 0 --manifest-path fuzz/Cargo.toml >/dev/null; then
    echo "fuzz/Cargo.lock is out of date: run 'cargo tree --manifest-path fuzz/Cargo.toml' (it writes the missing entries) and commit it" >&2
    exit 1
fi

echo "== building the fuzz targets (release, debug assertions, sanitizer: $sanitizer)"
# -a keeps overflow checks and debug assertions on in the optimised build.
RUSTC_BOOTSTRAP=1 cargo fuzz build -O -a -s "$sanitizer" --target-dir "$out"
bin="$out/$triple/release"

# The config target writes each input to a file in the temp directory: a private one, removed
# at the end, so that fuzzing leaves nothing behind in /tmp.
TMPDIR="$(mktemp -d "${TMPDIR:-/tmp}/casola-fuzz.XXXXXX")"
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT

summary=()
for t in $targets; do
    if [ -n "$seconds" ]; then echo "== fuzzing $t for ${seconds}s"; else echo "== fuzzing $t: $runs runs, seed $seed"; fi
    mkdir -p "$out/corpus/$t" "$out/artifacts/$t" "fuzz/corpus/$t"
    log="$out/$t.log"
    dict=()
    if [ -f "fuzz/$t.dict" ]; then dict=(-dict="fuzz/$t.dict"); fi
    if [ -n "$seconds" ]; then
        # Exploration: new inputs go to the first directory (under target/), never into the
        # committed seeds.
        budget=(-max_total_time="$seconds")
        corpus=("$out/corpus/$t" "fuzz/corpus/$t")
    else
        # The reproducible budget: a scratch corpus, filled afresh from the committed seeds.
        rm -rf "$out/scratch/$t" && mkdir -p "$out/scratch/$t"
        budget=(-runs="$runs" -seed="$seed")
        corpus=("$out/scratch/$t" "fuzz/corpus/$t")
    fi
    if ! "$bin/$t" "${budget[@]}" -timeout=10 -rss_limit_mb=1024 \
        -print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" "${dict[@]}" \
        "${corpus[@]}" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $t failed; its input is in $out/artifacts/$t/" >&2
        exit 1
    fi
    executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    kept=$(find "${corpus[0]}" -type f | wc -l)
    summary+=("$(printf '%-14s %10s runs, coverage %s edges, corpus %s' \
        "$t" "${executed:-?}" "${cov:-?}" "$kept")")
done

echo "== fuzzing: no crash"
printf '%s\n' "${summary[@]}"
