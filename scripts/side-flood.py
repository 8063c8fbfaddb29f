#!/usr/bin/env python3
"""Idle-connection probe for the admin and console ports (issue 11 item 3), against a running
casola-auth on loopback.

Opens COUNT idle TCP connections to an HTTP port of the server (the admin port by default),
then asks PATH five times over new connections and reports how long each answer took, how
many of the idle connections the server closed, and the server's open file descriptors.
Not run in CI (tests/integration/fairness.rs covers the behaviour at a cap of 4); results go
into docs/reliability.md.

    casola-auth serve --listen 127.0.0.1:47351 --admin-listen 127.0.0.1:47391 &
    python3 scripts/side-flood.py --addr 127.0.0.1:47391 --count 500 \
        --pid $(pgrep -f 'casola-auth serve')
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time


def open_fds(pid: int | None) -> int | None:
    return len(os.listdir(f"/proc/{pid}/fd")) if pid else None


async def probe(host: str, port: int, count: int, path: str, pid: int | None) -> None:
    print("server fds before:", open_fds(pid))
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        try:
            idle.append(await asyncio.wait_for(asyncio.open_connection(host, port), 3))
        except (OSError, asyncio.TimeoutError):
            failed += 1

    await asyncio.gather(*(one() for _ in range(count)))
    await asyncio.sleep(1)
    print(f"idle connections opened: {len(idle)}, failed: {failed}; server fds: {open_fds(pid)}")
    for _ in range(5):
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: casola\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
            print(f"{path}: {line} in {(time.monotonic() - started) * 1000:.1f} ms")
            writer.close()
        except (OSError, asyncio.TimeoutError) as e:
            print(f"{path}: no answer ({type(e).__name__}) after {(time.monotonic() - started) * 1000:.1f} ms")
        await asyncio.sleep(0.2)
    closed = 0
    for reader, _ in idle:
        try:
            closed += await asyncio.wait_for(reader.read(1), 0.01) == b""
        except asyncio.TimeoutError:
            pass
        except OSError:
            closed += 1
    print(f"idle connections closed by the server: {closed}; server fds: {open_fds(pid)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", default="127.0.0.1:9090")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--pid", type=int)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = args.addr.rsplit(":", 1)
    asyncio.run(probe(host, int(port), args.count, args.path, args.pid))


if __name__ == "__main__":
    main()
