#!/usr/bin/env python3
"""Idle-connection probe (issue 11 item 3), against a running casola-auth on loopback.

Opens COUNT TCP connections to the gRPC port that never send the HTTP/2 preface (spread over
several processes, so that no client process needs more file descriptors than its limit),
and meanwhile asks the gRPC health service over a new connection every half second with
grpcurl. Reports how many health checks answered SERVING, how long the idle connections
stayed open before the server closed them, and the server's open file descriptors and RSS.
Not run in CI (the suite's test uses 2,000 connections); results go into docs/reliability.md.

    casola-auth serve &      # default limits: 10,000 connections, 10 s handshake timeout
    python3 scripts/idle-connections.py --addr 127.0.0.1:50051 --count 20000 \
        --pid $(pgrep -f 'casola-auth serve') --grpcurl PATH/TO/grpcurl

Loopback only; bounded by --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import subprocess
import time


def opener(host: str, port: int, count: int, seconds: float, out: multiprocessing.Queue) -> None:
    """Opens `count` idle connections; reports (opened, refused, close times in seconds)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def one() -> float | None:
        """Seconds from open to the server's close; None: still open; -1: refused."""
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return -1.0
        opened = time.monotonic()
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=seconds)
            # b"" is end of file: the server closed it.
            return time.monotonic() - opened if data == b"" else None
        except asyncio.TimeoutError:
            return None
        except ConnectionError:
            return time.monotonic() - opened
        finally:
            writer.close()

    async def main() -> list[float | None]:
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(0)
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    out.put(results)


def server_stats(pid: int | None) -> str:
    if pid is None:
        return ""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(
        line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:")
    )
    return f"server fds {fds}, RSS {int(rss) // 1024} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--grpcurl", default="grpcurl")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    assert host in ("127.0.0.1", "::1", "localhost"), "loopback only"

    out: multiprocessing.Queue = multiprocessing.Queue()
    per = args.count // args.processes
    procs = [
        multiprocessing.Process(target=opener, args=(host, int(port), per, args.seconds, out))
        for _ in range(args.processes)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    checks = []
    peak = ""
    while time.monotonic() - started < args.seconds:
        t0 = time.monotonic()
        result = subprocess.run(
            [args.grpcurl, "-plaintext", "-max-time", "2", "-d", '{"service":"liveness"}',
             args.addr, "grpc.health.v1.Health/Check"],
            capture_output=True, text=True,
        )
        ok = result.returncode == 0 and "SERVING" in result.stdout
        checks.append((round(t0 - started, 1), ok, round((time.monotonic() - t0) * 1000)))
        stats = server_stats(args.pid)
        if stats:
            peak = stats
            print(f"t={t0 - started:5.1f}s health {'SERVING' if ok else 'FAILED'} "
                  f"in {checks[-1][2]} ms; {stats}", flush=True)
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    results = []
    for _ in procs:
        results.extend(out.get())
    for p in procs:
        p.join()
    refused = sum(1 for r in results if r == -1.0)
    closed = sorted(r for r in results if r is not None and r >= 0)
    still_open = sum(1 for r in results if r is None)
    print(f"{len(results)} idle connections: {refused} refused at connect, "
          f"{len(closed)} closed by the server, {still_open} still open after {args.seconds} s")
    if closed:
        q = lambda f: closed[min(len(closed) - 1, int(f * len(closed)))]
        print(f"closed after: min {closed[0]:.2f} s, p50 {q(0.5):.2f} s, "
              f"p99 {q(0.99):.2f} s, max {closed[-1]:.2f} s")
    answered = sum(1 for _, ok, _ in checks if ok)
    slowest = max((ms for _, ok, ms in checks if ok), default=0)
    print(f"health on a new connection: {answered} of {len(checks)} SERVING "
          f"(slowest {slowest} ms); last sample: {peak or 'no --pid'}")


if __name__ == "__main__":
    main()
