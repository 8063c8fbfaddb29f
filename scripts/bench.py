#!/usr/bin/env python3
"""The benchmark matrix of casola-auth (issue 4), written up in docs/benchmarks.md.

    python3 scripts/bench.py [--seconds 10] [--out docs/benchmarks.md]

Builds the release binaries, starts a throwaway PostgreSQL (with pg_stat_statements) and
two casola-auth replicas on it, and drives them with casola-auth-bench. Every speed figure
is compared with a baseline measured in the same run on the same server build (the no-op
RPC grpc.health.v1.Health/Check), because these machines are noisy. The load generator runs
on the same 2-core machine as the servers and Postgres: absolute numbers are low, ratios are
what the targets are about. A tool, not a test: it prints figures and asserts no speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("E2E_LOG_DIR", str(REPO / ".tmp/bench-logs"))
sys.path.insert(0, str(REPO / "tests/e2e"))

import harness  # noqa: E402
from harness import Postgres, clean_env, free_port, run, spawn, stop, wait_until  # noqa: E402

BIN = REPO / "target/release/casola-auth"
BENCH = REPO / "target/release/casola-auth-bench"
ARGON2 = {"memory_kib": 19456, "iterations": 2, "parallelism": 1}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench(*args: str, timeout: float = 900) -> dict:
    cp = run([BENCH, *args], timeout=timeout)
    return json.loads(cp.stdout.strip().splitlines()[-1])


class Replica:
    def __init__(self, name: str, db_url: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.admin = free_port()
        self.env = clean_env(DATABASE_URL=db_url, RUST_LOG="warn", CASOLA_AUTH_CONSOLE__ENABLED="false", **(env or {}))
        self.proc = None

    @property
    def target(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Replica":
        self.proc = spawn(
            f"casola-auth-{self.name}",
            [BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin}"],
            env=self.env,
        )
        wait_until(f"replica {self.name}", lambda: harness.http_get(f"http://127.0.0.1:{self.admin}/readyz")[0] == 200, 30, self.proc)
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        stop(self.proc)


def mint(pg: Postgres, count: int, path: Path, *, filler: int = 0, params: dict = ARGON2) -> Path:
    cp = run(
        [BENCH, "mint", "--database-url", pg.url, "--count", str(count), "--filler", str(filler),
         "--memory-kib", str(params["memory_kib"]), "--iterations", str(params["iterations"]),
         "--parallelism", str(params["parallelism"])],
        timeout=1800,
    )
    path.write_text(cp.stdout)
    return path


def load(target: str, mode: str, seconds: float, *, tokens: Path | None = None, extra: tuple[str, ...] = ()) -> dict:
    args = ["load", "--target", target, "--mode", mode, "--duration", str(seconds), *extra]
    if tokens is not None:
        args += ["--tokens", str(tokens)]
    r = bench(*args)
    log(f"{mode} {' '.join(extra)}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, errors {r['errors']}")
    return r


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 1024 / 1024, 1), "kernel": platform.release(),
            "rustc": rustc, "git": rev}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each load run")
    ap.add_argument("--out", default=str(REPO / "docs/benchmarks.md"))
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    s = a.seconds
    if not a.no_build:
        log("cargo build --release --bins")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bins"], cwd=REPO, check=True)
    work = REPO / ".tmp/bench"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    pg = Postgres("bench", settings={"shared_preload_libraries": "pg_stat_statements", "max_connections": "200"}).start()
    try:
        results["postgres"] = pg.psql("show server_version").stdout.strip()
        pg.psql("create extension if not exists pg_stat_statements")
        run([BIN, "migrate"], env=clean_env(DATABASE_URL=pg.url))
        issuer = run([BIN, "token", "create", "--org", "bench", "--user", "ops", "--name", "bench issuer",
                      "--preset", "admin-full", "--scope", "tokens:issue"], env=clean_env(DATABASE_URL=pg.url)).stdout.strip()

        results["argon2"] = bench("argon2", "--rounds", "30")
        log(f"argon2 verify: {results['argon2']['verify_ms']:.2f} ms")

        warm = mint(pg, 1000, work / "warm.txt")
        cold = mint(pg, int(max(2000, 400 * s)), work / "cold.txt")
        flood = mint(pg, 5000, work / "flood.txt")
        revoke = mint(pg, 200, work / "revoke.txt")

        # A TTL longer than the whole matrix, so the warm set stays warm across runs; with the
        # default 60 s every hot token costs one extra verify a minute, which is noise.
        long_ttl = {"CASOLA_AUTH_CACHE__TTL_SECONDS": "1800"}
        a_ = Replica("a", pg.url, long_ttl).start()
        b_ = Replica("b", pg.url, long_ttl).start()
        # Warm every token once on both replicas (a first use costs a full verify), then measure.
        for rep in (a_, b_):
            load(rep.target, "authorize", 300, tokens=warm, extra=("--once",))
        r = {}
        # Three interleaved rounds of baseline, Authorize and Check: the machine's speed
        # drifts, so each ratio is taken within one round and the median round is reported.
        def measured(mode: str, tokens: Path | None = None) -> dict:
            # The server's own CPU per request, apart from the load generator's share.
            cpu = a_.cpu_seconds()
            res = load(a_.target, mode, s, tokens=tokens)
            res["server_cpu_us_per_request"] = (a_.cpu_seconds() - cpu) * 1e6 / max(res["requests"], 1)
            return res

        rounds = []
        for _ in range(3):
            rounds.append({
                "baseline": measured("baseline"),
                "warm": measured("authorize", warm),
                "check": measured("check", warm),
            })
        rounds.sort(key=lambda x: x["warm"]["rps"] / x["baseline"]["rps"])
        r["rounds"] = [{k: v["rps"] for k, v in x.items()} for x in rounds]
        r.update(rounds[1])
        half = r["warm"]["rps"] / 2
        paced = ("--rate", f"{half:.0f}", "--concurrency", "8")
        r["baseline_half"] = load(a_.target, "baseline", s, extra=paced)
        r["warm_half"] = load(a_.target, "authorize", s, tokens=warm, extra=paced)
        r["cold"] = load(a_.target, "authorize", s, tokens=cold, extra=("--once",))

        # Warm p99 at half load while a flood of wrong secrets for 5,000 lookup ids runs.
        flood_proc = subprocess.Popen(
            [str(BENCH), "load", "--target", a_.target, "--mode", "authorize-wrong", "--tokens", str(flood),
             "--duration", str(s + 2), "--concurrency", "64"],
            stdout=subprocess.PIPE, text=True, env=clean_env(),
        )
        time.sleep(1)
        r["warm_half_flood"] = load(a_.target, "authorize", s, tokens=warm, extra=paced)
        r["flood"] = json.loads(flood_proc.communicate(timeout=120)[0].strip().splitlines()[-1])
        log(f"flood: {r['flood']['rps']:.0f} req/s, shed {r['flood']['shed']}, denied {r['flood']['denied']}")

        r["revocation"] = bench("revoke-latency", "--a", a_.target, "--b", b_.target, "--issuer", issuer,
                                "--tokens", str(revoke), "--count", "200")
        log(f"revocation A->B: p50 {r['revocation']['p50_ms']:.2f} ms, p99 {r['revocation']['p99_ms']:.2f} ms")

        # last_used: statements per flush interval per replica under load on both replicas.
        pg.psql("select pg_stat_statements_reset()")
        window = 16.0
        other = subprocess.Popen([str(BENCH), "load", "--target", b_.target, "--mode", "authorize", "--tokens", str(warm),
                                  "--duration", str(window), "--concurrency", "16"], stdout=subprocess.PIPE, text=True, env=clean_env())
        r["last_used_load"] = load(a_.target, "authorize", window, tokens=warm, extra=("--concurrency", "16"))
        other.communicate(timeout=120)
        calls = pg.psql("select coalesce(sum(calls), 0) from pg_stat_statements where query like 'update api_tokens as t%last_used_at%'").stdout.strip()
        r["last_used"] = {"statements": int(calls), "window_s": window, "interval_s": 5.0, "replicas": 2,
                          "requests": r["last_used_load"]["requests"]}

        # Cold lookups: unknown ids (the index lookup alone) and first uses (lookup + verify).
        def lookups(label: str) -> dict:
            rows = int(pg.psql("select count(*) from api_tokens").stdout.strip())
            fresh = mint(pg, 300, work / f"fresh-{label}.txt")
            unknown = load(a_.target, "authorize-unknown", s / 2, extra=("--concurrency", "1", "--connections", "1"))
            first = load(a_.target, "authorize", 60, tokens=fresh, extra=("--once", "--concurrency", "1", "--connections", "1"))
            return {"rows": rows, "unknown": unknown, "first_use": first}

        r["lookup_small"] = lookups("small")
        log("adding 1,000,000 filler rows")
        mint(pg, 0, work / "none.txt", filler=1_000_000)
        r["lookup_large"] = lookups("large")
        a_.stop()
        b_.stop()

        # RSS with 100,000 cached tokens (cheap argon2 here: the cache holds rows, not hashes' cost).
        cheap = {"memory_kib": 64, "iterations": 1, "parallelism": 1}
        many = mint(pg, 100_000, work / "many.txt", params=cheap)
        c = Replica("c", pg.url, {"CASOLA_AUTH_ARGON2__MEMORY_KIB": "64", "CASOLA_AUTH_ARGON2__ITERATIONS": "1",
                                   "CASOLA_AUTH_CACHE__TTL_SECONDS": "3600", "CASOLA_AUTH_CACHE__MAX_ENTRIES": "200000"}).start()
        load(c.target, "baseline", 2)  # settle allocator and connections
        rss_before = c.rss_kib()
        fill = load(c.target, "authorize", 600, tokens=many, extra=("--once", "--concurrency", "32"))
        time.sleep(1)
        rss_after = c.rss_kib()
        c.stop()
        r["rss"] = {"before_kib": rss_before, "after_kib": rss_after, "tokens": fill["ok"]}
        results["runs"] = r
    finally:
        pg.stop()

    (work / "results.json").write_text(json.dumps(results, indent=2))
    Path(a.out).write_text(render(results, s))
    log(f"wrote {a.out} and {work / 'results.json'}")
    return 0


def render(res: dict, seconds: float) -> str:
    r = res["runs"]
    m = res["machine"]
    cores = m["cores"]
    verify_s = res["argon2"]["verify_ms"] / 1000
    theory = cores / verify_s
    base = r["baseline"]["rps"]
    warm_ratio = r["warm"]["rps"] / base
    check_ratio = r["check"]["rps"] / base
    all_ratios = ", ".join(f"{x['warm'] / x['baseline']:.2f}" for x in r["rounds"])
    check_ratios = ", ".join(f"{x['check'] / x['baseline']:.2f}" for x in r["rounds"])
    cold_ratio = r["cold"]["ok"] / r["cold"]["seconds"] / theory
    flood_ratio = r["warm_half_flood"]["p99_ms"] / r["warm_half"]["p99_ms"]
    lu = r["last_used"]
    per_interval = lu["statements"] / (lu["window_s"] / lu["interval_s"]) / lu["replicas"]
    rss = r["rss"]
    per_entry = (rss["after_kib"] - rss["before_kib"]) * 1024 / max(rss["tokens"], 1)

    def ok(flag: bool) -> str:
        return "met" if flag else "**missed**"

    def row(name: str, x: dict) -> str:
        return (f"| {name} | {x['rps']:.0f} | {x['p50_ms']:.3f} | {x['p90_ms']:.3f} | {x['p99_ms']:.3f} | {x['max_ms']:.2f} "
                f"| {x['errors']} | {x['concurrency']} |")

    ls, ll = r["lookup_small"], r["lookup_large"]
    return f"""# Benchmarks

Produced by `python3 scripts/bench.py` (one run, {res['date']}, git {m['git']}); raw figures in
`.tmp/bench/results.json`. The script builds the release binaries, starts a throwaway
PostgreSQL {res['postgres']} (fsync off, pg_stat_statements) and two casola-auth replicas, and
drives them with `casola-auth-bench` (src/bin/casola-auth-bench.rs) over loopback, each load
run {seconds:.0f} s with 4 HTTP/2 connections unless said otherwise.

Machine: {m['cpu']}, {cores} cores, {m['mem_gib']} GiB, Linux {m['kernel']}, {m['rustc']}. The load
generator, both servers and Postgres share these {cores} cores, so absolute rates are far below
what a server gets on its own machine; the targets are ratios against a baseline measured in the
same run on the same server build: `grpc.health.v1.Health/Check`, an RPC that does no work.

## Summary

| figure | value | target | |
|---|---|---|---|
| warm Authorize req/s ÷ baseline req/s (median of 3 interleaved rounds: {all_ratios}) | {warm_ratio:.2f} ({r['warm']['rps']:.0f} / {base:.0f}) | ≥ 0.85 | {ok(warm_ratio >= 0.85)} |
| warm Check req/s ÷ baseline req/s (rounds: {check_ratios}) | {check_ratio:.2f} ({r['check']['rps']:.0f} / {base:.0f}) | (same path) | |
| server CPU per request: baseline / warm Authorize / warm Check | {r['baseline']['server_cpu_us_per_request']:.1f} / {r['warm']['server_cpu_us_per_request']:.1f} / {r['check']['server_cpu_us_per_request']:.1f} µs (baseline ÷ Authorize = {r['baseline']['server_cpu_us_per_request'] / r['warm']['server_cpu_us_per_request']:.2f}) | | |
| warm Authorize p99 at half of peak ({r['warm_half']['rps']:.0f} req/s) | {r['warm_half']['p99_ms']:.3f} ms (baseline at the same rate: {r['baseline_half']['p99_ms']:.3f} ms) | ≤ 1 ms | {ok(r['warm_half']['p99_ms'] <= 1.0)} |
| cold verifies/s ÷ (cores / argon2 time) | {cold_ratio:.2f} ({r['cold']['ok'] / r['cold']['seconds']:.1f} / {theory:.1f}) | ≥ 0.9 | {ok(cold_ratio >= 0.9)} |
| warm p99 during a wrong-secret flood ÷ quiet warm p99 | {flood_ratio:.2f} ({r['warm_half_flood']['p99_ms']:.3f} / {r['warm_half']['p99_ms']:.3f} ms) | ≤ 2 | {ok(flood_ratio <= 2)} |
| revocation A → B, p50 / p99 over {r['revocation']['revocations']} | {r['revocation']['p50_ms']:.2f} / {r['revocation']['p99_ms']:.2f} ms | p99 ≤ 50 ms | {ok(r['revocation']['p99_ms'] <= 50)} |
| last-used SQL statements per flush interval per replica | {per_interval:.2f} ({lu['statements']} in {lu['window_s']:.0f} s, 2 replicas, {lu['requests']} requests on A) | ≤ 1 | {ok(per_interval <= 1)} |
| cold lookup (unknown id) p50 / p99, {ls['rows']:,} rows → {ll['rows']:,} rows | {ls['unknown']['p50_ms']:.3f} / {ls['unknown']['p99_ms']:.3f} → {ll['unknown']['p50_ms']:.3f} / {ll['unknown']['p99_ms']:.3f} ms | flat | |
| first use of a token (lookup + argon2) p50, {ls['rows']:,} → {ll['rows']:,} rows | {ls['first_use']['p50_ms']:.2f} → {ll['first_use']['p50_ms']:.2f} ms | flat | |
| RSS with {rss['tokens']:,} cached tokens | {rss['before_kib'] / 1024:.0f} MiB → {rss['after_kib'] / 1024:.0f} MiB (~{per_entry:.0f} B per entry) | | |

argon2id verify at the default parameters (m={ARGON2['memory_kib']} KiB, t={ARGON2['iterations']}, p={ARGON2['parallelism']})
took {res['argon2']['verify_ms']:.2f} ms on one thread here, so {cores} cores can do at most {theory:.1f} verifies/s.

## Where targets are missed, and why

- **Warm Authorize ÷ baseline.** The server spends {r['warm']['server_cpu_us_per_request']:.1f} µs of CPU per warm
  Authorize against {r['baseline']['server_cpu_us_per_request']:.1f} µs per no-op call (both through the same telemetry layer).
  In a profile of a warm-Authorize load (`perf record --call-graph dwarf -p <server>`, taken
  on 2026-12-01 for this write-up, not by this script) `Authorizer::authenticate` (parse and
  checksum, keyed BLAKE3, the moka read and its bookkeeping, the revoked-set check, the
  principal clone) held about 7% of the server's samples, protobuf decoding and the principal
  conversion about 4-5%, and registering the extra decision and cache counter samples about
  2%; the rest of a request (h2, syscalls, the allocator) is common to both RPCs. With the
  load generator on the same two cores, its own extra work per Authorize counts against the
  throughput ratio as well.
  Check costs more again ({r['check']['server_cpu_us_per_request']:.1f} µs): a larger request (headers, attributes) and a
  response that carries header mutations and dynamic metadata.
- **p99 at half load.** The no-op baseline paced at the same rate has a p99 of
  {r['baseline_half']['p99_ms']:.2f} ms here, so the 1 ms target sits at what this shared 2-core machine can show at all;
  the warm Authorize p99 is {r['warm_half']['p99_ms'] - r['baseline_half']['p99_ms']:+.2f} ms from that baseline.
- **Cold verifies.** The theoretical rate assumes verifies scale linearly with cores. Two
  argon2 runs side by side slow each other down (each holds 19 MiB and is memory-bound: two
  `casola-auth-bench argon2` processes at once measured about 20 ms each against 18 ms alone),
  and Postgres, the runtime and the load generator take the same cores.
- **Warm p99 during a flood.** The flood keeps both cores busy with argon2. The argon2 threads
  run at nice 10 and reuse their working memory (both added after an earlier run of this
  script measured 4.5×), so cache hits win the CPU most of the time, but the flood's own gRPC
  traffic and every moment a hit has to wait for a core show at the 99th percentile on a
  2-core machine. On a machine with spare cores the warm path would not share them at all.

## Load runs

| run | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | concurrency |
|---|---|---|---|---|---|---|---|
{row('baseline: Health/Check', r['baseline'])}
{row('Authorize warm, 1,000 tokens', r['warm'])}
{row('Check warm, 1,000 tokens', r['check'])}
{row('baseline at half of peak (paced)', r['baseline_half'])}
{row('Authorize warm at half of peak (paced)', r['warm_half'])}
{row('Authorize cold (fresh token per call)', r['cold'])}
{row('Authorize warm at half of peak, during flood', r['warm_half_flood'])}
{row('wrong-secret flood, 5,000 lookup ids', r['flood'])}
{row('unknown ids, ' + format(ls['rows'], ',') + ' rows', ls['unknown'])}
{row('unknown ids, ' + format(ll['rows'], ',') + ' rows', ll['unknown'])}
{row('first use, ' + format(ls['rows'], ',') + ' rows', ls['first_use'])}
{row('first use, ' + format(ll['rows'], ',') + ' rows', ll['first_use'])}

The flood run answered {r['flood']['denied']} requests with a denial after a verify or a taken verify slot and shed
{r['flood']['shed']} with RESOURCE_EXHAUSTED when the argon2 queue was full; warm requests never enter
that queue.

## Commands

```
python3 scripts/bench.py --seconds {seconds:.0f}
# which runs, among others:
casola-auth-bench argon2 --rounds 30
casola-auth-bench mint --database-url $URL --count 1000 > warm.txt
casola-auth-bench load --target http://127.0.0.1:$A --mode baseline --duration {seconds:.0f}
casola-auth-bench load --target http://127.0.0.1:$A --mode authorize --tokens warm.txt --duration {seconds:.0f}
casola-auth-bench load --target http://127.0.0.1:$A --mode authorize --tokens cold.txt --once --duration {seconds:.0f}
casola-auth-bench load --target http://127.0.0.1:$A --mode authorize-wrong --tokens flood.txt --concurrency 64
casola-auth-bench revoke-latency --a http://127.0.0.1:$A --b http://127.0.0.1:$B --issuer $ISSUER --tokens revoke.txt
```

## How to read it

- Latency is measured by the client from send to answer, over loopback, with the client
  competing for the same cores; paced runs (`--rate`) measure from the actual send, so they
  under-report queueing behind a stalled client (coordinated omission), which matters little
  at half load.
- Replicas A and B run with `cache.ttl_seconds = 1800` so the warm set stays cached for the
  whole matrix; with the default 60 s each hot token is re-verified once a minute.
- "Cold" tokens were minted sharing one secret part, so one argon2 hash serves all their rows;
  each still costs a full verify on first use because its cache key (the whole token) is new.
- The revocation figure runs from the moment RevokeToken returned on replica A to the first
  REVOKED answer from replica B, polling B back to back; it includes one Authorize round trip.
- last-used statements are counted by pg_stat_statements over a {lu['window_s']:.0f} s window with the
  default 5 s flush interval, on both replicas under load; a window that straddles flush
  boundaries can hold one interval more than its length suggests.
- RSS is measured with cheap argon2 parameters (m=64 KiB) so that 100,000 first uses finish in
  a minute; the cache holds rows and principals, whose size does not depend on them.
"""


if __name__ == "__main__":
    sys.exit(main())
