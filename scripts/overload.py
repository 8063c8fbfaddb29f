#!/usr/bin/env python3
"""The overload run of casola-auth (issue 11), written up in docs/reliability.md.

    python3 scripts/overload.py [--seconds 20] [--connections 40] [--streams 256] [--no-build]
                                [--binary PATH] [--server-env KEY=VALUE ...] [--pin]
                                [--rate N] [--floor] [--cold N] [--probe-concurrency 64]
                                [--pressure authorize|check]

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
  a connection's burst spans more reads); its answers by status in `server_codes_check`.
The replica's refusals by limit, its argon2 queue waits, its token reads' durations and the
waits behind its calls (`casola_auth_call_wait_seconds`) are in `server_limited`.

The same client runs alone first (no pressure), for comparison. Prints one JSON document
and writes it to .tmp/overload/results.json. A tool, not a test: it asserts nothing.
Needs what scripts/bench.py needs, less Envoy.
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


def deadline_run(rep: Replica, tokens: Path, seconds: float, deadline_ms: int, concurrency: int,
                 rate: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BENCH), "deadline", "--target", rep.target, "--tokens", str(tokens), "--deadline-ms", str(deadline_ms),
         # Enough connections that no call waits for a stream in the client (32 per connection).
         "--concurrency", str(concurrency), "--connections", str(max(2, -(-concurrency // 32))),
         "--rate", str(rate), "--duration", str(seconds)],
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
    the waits behind its calls (casola_auth_call_wait_seconds' sum and count, by how seen)."""
    _, body = bench.harness.http_get(f"http://127.0.0.1:{rep.admin}/metrics")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(("casola_auth_limited_total{", "casola_auth_argon2_verifies_total{",
                            "casola_auth_argon2_rejected_total{", "casola_auth_argon2_queue_wait_seconds_",
                            "casola_auth_argon2_verify_duration_seconds_", "casola_auth_call_wait_seconds_sum",
                            "casola_auth_call_wait_seconds_count")) or (
                line.startswith("casola_auth_store_call_duration_seconds_") and "find_by_lookup_id" in line):
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("casola_auth_")] = float(value)
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
    return {
        "rps": float(rps.group(1)) if rps else None,
        "done": int(req.group(3)) if req else None, "succeeded": int(req.group(4)) if req else None,
        "failed": int(req.group(5)) if req else None, "errored": int(req.group(6)) if req else None,
        "time_for_request": dict(zip(("min", "max", "mean", "sd"), t.groups())) if t else None,
    }


def pressure(a: argparse.Namespace, streams: int, frame: Path, url: str) -> subprocess.Popen:
    """h2load in the run's shape: --connections x `streams`, closed loop or at --rate."""
    return subprocess.Popen(
        ["h2load", "-D", str(round(a.seconds)), "-t", "1", "-c", str(a.connections), "-m", str(streams),
         *(["--rps", str(max(1, a.rate // a.connections))] if a.rate else []),
         "-d", str(frame), *[x for h in (*GRPC_HEADERS, f"grpc-timeout: {a.deadline_ms}m") for x in ("-H", h)],
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
    ap.add_argument("--pressure", choices=("authorize", "check"), default="authorize",
                    help="the RPC h2load floods with (check: Envoy's CheckRequest, a larger message, "
                         "so a connection's burst spans more reads); the recording client calls Authorize")
    ap.add_argument("--floor", action="store_true",
                    help="then the same h2load shape against noop-ext-authz (answers at once, does nothing): "
                         "the least time any answer takes at this load on this machine")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
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
    rep = None
    try:
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
            os.sched_setaffinity(0, {1})  # inherited by h2load and the recording client
        frame = WORK / f"{a.pressure}.frame"
        run([BENCH, "frame", "--mode", a.pressure, "--tokens", warm, "--out", frame])
        bench.probe(rep.target, "authorize", warm)

        # Unloaded: the recording client alone.
        quiet = deadline_run(rep, warm, min(a.seconds, 10), a.deadline_ms, a.probe_concurrency)
        res["unloaded"] = json.loads(quiet.communicate(timeout=120)[0].strip().splitlines()[-1])
        log(f"unloaded: {res['unloaded']}")

        res["rss_before_kib"] = rep.rss_kib()
        codes0 = codes_of(rep, "casola.auth.v1.AuthorizationService/Authorize")
        check_codes0 = codes_of(rep, "envoy.service.auth.v3.Authorization/Check")
        limited0 = limited(rep)
        buckets0 = duration_buckets(rep, "casola.auth.v1.AuthorizationService/Authorize")
        sampler = RssSampler(rep)
        sampler.start()
        h2 = pressure(a, a.streams, frame, rep.target + PATHS[a.pressure]) if a.connections else None
        time.sleep(2)  # h2load's streams open first
        probe = deadline_run(rep, cold or warm, a.seconds - 4, a.deadline_ms, a.probe_concurrency, a.probe_rate)
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
        if a.pressure == "check":
            res["server_codes_check"] = diff(codes_of(rep, "envoy.service.auth.v3.Authorization/Check"), check_codes0)
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
        if rep is not None:
            rep.stop()
        pg.stop()
    (WORK / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
